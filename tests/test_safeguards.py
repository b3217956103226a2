"""Safeguards of the natural-gradient step: backoff, PSD correction, precision floor.

Truth: hand-computed backoff arithmetic, the mean step `mu + rho Lambda_new^-1 g_bar` solved
with numpy, and the sign of `E_q[H]` (which makes plain steps invalid) from the Student-t
Hessian written out here and integrated by numpy Gauss-Hermite quadrature.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_fit_step_traces, student_t_outliers_model, tutorial_model

import ngvi
from ngvi.optimizers.safeguards import backoff_update, safeguarded_update


def _sites(W, lam1=(0.0, 0.0)):
    """One latent function (C = 1) with two sites."""
    return ngvi.SiteGaussianVariational(
        jnp.asarray([lam1], dtype=float), -0.5 * jnp.asarray([W], dtype=float)
    )


def _site_target(W, lam1=(0.0, 0.0)):
    return _sites(W, lam1).parameters


def test_backoff_halves_until_sites_are_nonnegative():
    q, target = _sites([1.0, 2.0], (0.3, -0.1)), _site_target([-1.0, 2.0], (0.5, 0.2))
    # rho = 1 gives W = (-1, 2): invalid; rho = 1/2 gives W = (0, 2): valid.
    new_q, rho, num_backoffs = backoff_update(q, target, None, 1.0, max_backoffs=10)
    assert float(rho) == 0.5 and int(num_backoffs) == 1
    np.testing.assert_allclose(new_q.site_precision, [[0.0, 2.0]])
    np.testing.assert_allclose(new_q.lam1, [[0.4, 0.05]])
    assert bool(new_q.precision_is_valid())


def test_backoff_exhausted_keeps_q():
    q, target = _sites([0.0, 1.0]), _site_target([-1.0, 1.0], (1.0, 1.0))
    new_q, rho, num_backoffs = backoff_update(q, target, None, 1.0, max_backoffs=4)
    assert float(rho) == 0.0 and int(num_backoffs) == 4
    np.testing.assert_array_equal(new_q.lam1, q.lam1)
    np.testing.assert_array_equal(new_q.lam2, q.lam2)


def test_dense_backoff_needs_a_positive_definite_precision():
    q = ngvi.DenseGaussianVariational(jnp.zeros((1, 2)), -0.5 * jnp.eye(2)[None])
    target = (jnp.ones((1, 2)), -0.5 * jnp.diag(jnp.array([-1.0, 1.0]))[None])
    # rho = 1: diag(-1, 1); rho = 1/2: diag(0, 1) (singular); rho = 1/4: diag(1/2, 1).
    singular = q.with_parameters((jnp.zeros((1, 2)), -0.5 * jnp.diag(jnp.array([0.0, 1.0]))[None]))
    assert not bool(singular.precision_is_valid())
    new_q, rho, num_backoffs = backoff_update(q, target, None, 1.0, max_backoffs=10)
    assert float(rho) == 0.25 and int(num_backoffs) == 2
    np.testing.assert_allclose(new_q.precision, np.diag([0.5, 1.0])[None])


def test_diagonal_backoff_needs_positive_precisions():
    q = ngvi.DiagonalGaussianVariational(jnp.zeros((1, 2)), jnp.full((1, 2), -0.5))
    target = (jnp.ones((1, 2)), -0.5 * jnp.array([[-1.0, 3.0]]))
    # rho = 1: (-1, 3); rho = 1/2: (0, 2), not > 0; rho = 1/4: (1/2, 3/2).
    new_q, rho, num_backoffs = backoff_update(q, target, None, 1.0, max_backoffs=10)
    assert float(rho) == 0.25 and int(num_backoffs) == 2
    np.testing.assert_allclose(new_q.precision, [[0.5, 1.5]])
    np.testing.assert_allclose(new_q.eta1, [[0.25, 0.25]])


def test_backoff_per_latent_function():
    # Two latent functions: the step is valid only when *every* latent's sites are.
    q = ngvi.SiteGaussianVariational(jnp.zeros((2, 2)), -0.5 * jnp.array([[1.0, 1.0], [4.0, 1.0]]))
    target = (jnp.zeros((2, 2)), -0.5 * jnp.array([[1.0, 1.0], [-4.0, 1.0]]))
    # latent 1, site 0: 4 - 8 rho >= 0 needs rho <= 1/2
    new_q, rho, num_backoffs = backoff_update(q, target, None, 1.0, max_backoffs=10)
    assert float(rho) == 0.5 and int(num_backoffs) == 1
    np.testing.assert_allclose(new_q.site_precision, [[1.0, 1.0], [0.0, 1.0]])


@pytest.mark.parametrize("rho", [0.3, 1.0])
def test_psd_correction_dense_is_the_riemannian_step(rho):
    precision = np.array([[2.0, 0.3], [0.3, 1.0]])
    target_precision = np.array([[-1.0, 0.2], [0.2, 0.5]])  # indefinite
    mean, target_eta1 = np.array([0.5, -1.0]), np.array([1.0, 2.0])
    q = ngvi.DenseGaussianVariational(
        jnp.asarray(precision @ mean)[None], jnp.asarray(-0.5 * precision)[None]
    )
    target = (jnp.asarray(target_eta1)[None], jnp.asarray(-0.5 * target_precision)[None])
    new_q = safeguarded_update(q, target, jnp.asarray(mean)[None], rho, psd_correction=True)
    G = precision - target_precision
    expected_precision = precision - rho * G + 0.5 * rho**2 * G @ np.linalg.solve(precision, G)
    new_precision = np.asarray(new_q.precision)[0]
    np.testing.assert_allclose(new_precision, expected_precision, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(new_precision) > 0)
    # mean step of the natural gradient: mu + rho Lambda_new^-1 (eta1_t - Lambda_t mu)
    gradient = target_eta1 - target_precision @ mean
    expected_mean = mean + rho * np.linalg.solve(expected_precision, gradient)
    new_mean = np.linalg.solve(new_precision, np.asarray(new_q.eta1)[0])
    np.testing.assert_allclose(new_mean, expected_mean, atol=1e-10)


def test_psd_correction_on_sites():
    q, target = _sites([1.0, 0.5], (0.2, 0.1)), _site_target([-3.0, 0.4], (0.1, 0.0))
    mean = jnp.array([[0.7, -0.2]])
    new_q = safeguarded_update(q, target, mean, 1.0, psd_correction=True)
    # s_new = s - g + g^2 / (2 s), g = s - s_target: (1 - 4 + 8, 0.5 - 0.1 + 0.01)
    np.testing.assert_allclose(new_q.site_precision, [[5.0, 0.41]], atol=1e-12)
    np.testing.assert_allclose(new_q.lam1, [[0.1 + (5.0 + 3.0) * 0.7, 0.0 + 0.01 * -0.2]])


def test_precision_floor_on_sites():
    q, target = _sites([1.0, 0.5], (0.2, 0.1)), _site_target([-3.0, 0.4], (0.1, 0.0))
    mean = jnp.array([[0.7, -0.2]])
    floored = safeguarded_update(q, target, mean, 1.0, precision_floor=0.45)
    np.testing.assert_allclose(floored.site_precision, [[0.45, 0.45]])
    np.testing.assert_allclose(floored.lam1, [[0.1 + 3.45 * 0.7, 0.05 * -0.2]])


def test_psd_correction_on_the_diagonal_family():
    # s = (2, 1), m = (0.5, -1); target precisions (-2, 0.5), target eta1 = (1, 0).
    q = ngvi.DiagonalGaussianVariational(jnp.array([[1.0, -1.0]]), -0.5 * jnp.array([[2.0, 1.0]]))
    target = (jnp.array([[1.0, 0.0]]), -0.5 * jnp.array([[-2.0, 0.5]]))
    mean = q.coordinate_mean(None)
    np.testing.assert_allclose(mean, [[0.5, -1.0]])
    new_q = safeguarded_update(q, target, mean, 0.5, psd_correction=True)
    # s_new = s - rho g + rho^2 g^2 / (2 s), g = s - s_target = (4, 0.5)
    expected = np.array([2.0 - 2.0 + 0.125 * 16 / 2, 1.0 - 0.25 + 0.125 * 0.25 / 1])
    np.testing.assert_allclose(new_q.precision, expected[None], atol=1e-12)
    # eta1 = plain eta1 + (s_new - s_plain) m, plain = (1 - rho) (s, eta1) + rho target
    plain_s, plain_eta1 = np.array([0.0, 0.75]), np.array([1.0, -0.5])
    np.testing.assert_allclose(
        new_q.eta1, (plain_eta1 + (expected - plain_s) * np.array([0.5, -1.0]))[None]
    )


def test_invalid_safeguard_configurations_raise():
    with pytest.raises(ValueError, match="precision_floor"):
        ngvi.NaturalGradient(precision_floor=-1.0)
    with pytest.raises(ValueError, match="lr"):
        ngvi.GaussNewton(lr=0.0)
    linear = ngvi.Model(
        ngvi.GaussianPrior(jnp.zeros(2), 1.0),
        ngvi.likelihoods.Probit(),
        np.array([[1.0, 0.5], [0.3, -1.0], [-0.2, 0.4]]),
        np.array([1.0, 0.0, 1.0]),
    )
    dense = linear.init_variational()
    assert isinstance(dense, ngvi.DenseGaussianVariational)
    with pytest.raises(ValueError, match="full precision matrix"):
        ngvi.NaturalGradient(precision_floor=0.1).init(linear, dense)


def test_psd_correction_starts_empty_sites_at_the_prior_marginal():
    # Redesign: instead of refusing sites with W = 0, `init` gives them W_i = 1 / K_ii and
    # lam1_i = W_i m0_i, which leaves the mean at the prior mean.
    X, y = ngvi.datasets.tutorial()
    x = np.asarray(X, dtype=float).reshape(-1)
    K = 1.5 * np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2) + 1e-6 * np.eye(x.size)
    kernel = ngvi.kernels.SquaredExponential(variance=1.5, lengthscale=1.0)
    model = ngvi.Model(ngvi.GPPrior(kernel, mean=0.4, jitter=1e-6), ngvi.likelihoods.Probit(), X, y)
    strategy = ngvi.NaturalGradient(psd_correction=True)
    q, _ = strategy.init(model, model.init_variational())
    W = 1.0 / np.diag(K)
    np.testing.assert_allclose(q.site_precision, W[None], rtol=1e-12)
    np.testing.assert_allclose(q.lam1, (0.4 * W)[None], rtol=1e-12)
    # the posterior of prior x sites, by numpy inverses: mean m0, covariance (K^-1 + W)^-1
    mean, covariance = model.posterior(q)
    expected_cov = np.linalg.inv(np.linalg.inv(K) + np.diag(W))
    np.testing.assert_allclose(mean[0], np.full(x.size, 0.4), atol=1e-8)
    np.testing.assert_allclose(covariance[0], expected_cov, atol=1e-8)


def test_psd_correction_reaches_the_optimum_when_the_target_is_pd():
    model = tutorial_model()  # probit: log-concave, every target site precision is >= 0
    plain = ngvi.fit(model, ngvi.NaturalGradient(), 100, tol=1e-14, progress=False)
    corrected = ngvi.fit(
        model, ngvi.NaturalGradient(psd_correction=True), 200, tol=1e-14, progress=False
    )
    assert plain.converged and corrected.converged
    assert abs(float(plain.elbo - corrected.elbo)) < 1e-8
    assert int(np.sum(plain.history.num_backoffs)) == 0


def _expected_student_t_hessian(model, q, num_nodes=80):
    """`E_q[H]` per point: the Student-t `d^2 log p / df^2 = -(nu + 1)(a - r^2)/(a + r^2)^2`,
    `r = y - f`, `a = nu s^2`, by numpy Gauss-Hermite at `q`'s marginals."""
    marginals, _ = model.latent_marginals_and_kl(q)
    mean, variance = np.asarray(marginals.mean)[:, 0], np.asarray(marginals.variance)[:, 0]
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    weights = weights / weights.sum()
    nu, s = 4.0, 0.1  # student_t_outliers_model's defaults
    a = nu * s**2
    f = mean[:, None] + np.sqrt(variance)[:, None] * nodes[None, :]
    r2 = (np.asarray(model.y)[:, None] - f) ** 2
    hess = -(nu + 1.0) * (a - r2) / (a + r2) ** 2
    return hess @ weights


@pytest.fixture(scope="module")
def student_t():
    model = student_t_outliers_model()
    gauss_newton = ngvi.fit(model, ngvi.GaussNewton(), 300, tol=1e-12, progress=False)
    return model, gauss_newton


def test_student_t_gauss_newton_fits(student_t):
    _, result = student_t
    assert result.converged and np.all(np.isfinite(result.history.elbo))
    assert float(np.min(result.history.min_precision)) >= 0.0
    assert int(np.sum(result.history.num_backoffs)) == 0  # PSD by construction
    np.testing.assert_array_equal(result.history.step_size, 1.0)


def test_student_t_plain_step_would_not_be_pd(student_t):
    model, gauss_newton = student_t
    hess = _expected_student_t_hessian(model, gauss_newton.q)
    # The plain target site precision W_target = -E_q[H] is negative at the outliers.
    assert set(np.flatnonzero(hess > 0)) >= {5, 17, 30}


def test_student_t_backoff_fires(student_t):
    model, gauss_newton = student_t
    # From the Gauss-Newton fit, plain steps would make the outliers' W negative.
    result = ngvi.fit(
        model, ngvi.NaturalGradient(), 300, q=gauss_newton.q, tol=1e-12, progress=False
    )
    assert np.all(np.isfinite(result.history.elbo))
    assert int(np.sum(result.history.num_backoffs)) > 0
    assert float(np.min(result.history.step_size)) < 1.0
    assert float(np.min(result.history.min_precision)) >= 0.0
    # From the prior (W = 0) no step size keeps the outliers' W >= 0: q is kept, rho = 0.
    # The fit must say so rather than report the unchanged ELBO as convergence.
    with pytest.warns(UserWarning, match="no step size kept the precision"):
        stuck = ngvi.fit(model, ngvi.NaturalGradient(max_backoffs=3), 5, tol=0.0, progress=False)
    assert stuck.outcome == ngvi.FitOutcome.stalled and not stuck.converged
    assert stuck.num_steps == 1
    np.testing.assert_array_equal(stuck.history.step_size, 0.0)
    np.testing.assert_array_equal(stuck.history.num_backoffs, 3)


def test_student_t_psd_correction_fits(student_t):
    model, gauss_newton = student_t
    result = ngvi.fit(
        model, ngvi.NaturalGradient(psd_correction=True), 300, tol=1e-12, progress=False
    )
    assert result.converged and np.all(np.isfinite(result.history.elbo))
    assert float(np.min(result.history.min_precision)) > 0.0
    assert int(np.sum(result.history.num_backoffs)) == 0


@pytest.mark.parametrize(
    "strategy",
    [
        ngvi.NaturalGradient(),
        pytest.param(
            ngvi.NaturalGradient(psd_correction=True, precision_floor=1e-3),
        ),
        ngvi.NaturalGradient(precision_floor=1e-3),
    ],
)
def test_natural_gradient_compiles_once(strategy):
    model = tutorial_model()
    flipped = ngvi.Model(model.prior, model.likelihood, model.X, 1.0 - model.y)
    assert count_fit_step_traces(strategy, [model, model, flipped]) == 1
