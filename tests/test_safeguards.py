"""Safeguards of the natural-gradient step: backoff, PSD correction, precision floor.

Truth: hand-computed backoff arithmetic, the mean step `mu + rho Lambda_new^-1 g_bar` solved
with numpy, and the sign of `E_q[H]` (which makes plain steps invalid) from the likelihood.
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_step_traces, student_t_outliers_model, tutorial_model

import ngvi
from ngvi.optimizers.safeguards import backoff_update, precision_is_valid, safeguarded_update


def _sites(W, lam1=(0.0, 0.0)):
    kernel = jnp.array([[1.0, 0.5], [0.5, 1.0]])
    return ngvi.SiteGaussianVariational(
        jnp.zeros(2), kernel, jnp.asarray(lam1), -0.5 * jnp.asarray(W, dtype=float)
    )


def test_backoff_halves_until_sites_are_nonnegative():
    q, target = _sites([1.0, 2.0], (0.3, -0.1)), _sites([-1.0, 2.0], (0.5, 0.2))
    # rho = 1 gives W = (-1, 2): invalid; rho = 1/2 gives W = (0, 2): valid.
    new_q, rho, num_backoffs = backoff_update(q, target, None, 1.0, max_backoffs=10)
    assert float(rho) == 0.5 and int(num_backoffs) == 1
    np.testing.assert_allclose(new_q.site_precision, [0.0, 2.0])
    np.testing.assert_allclose(new_q.lam1, [0.4, 0.05])


def test_backoff_exhausted_keeps_q():
    q, target = _sites([0.0, 1.0]), _sites([-1.0, 1.0], (1.0, 1.0))
    new_q, rho, num_backoffs = backoff_update(q, target, None, 1.0, max_backoffs=4)
    assert float(rho) == 0.0 and int(num_backoffs) == 4
    np.testing.assert_array_equal(new_q.lam1, q.lam1)
    np.testing.assert_array_equal(new_q.lam2, q.lam2)


def test_dense_backoff_needs_a_positive_definite_precision():
    q = ngvi.DenseGaussianVariational(jnp.zeros(2), -0.5 * jnp.eye(2))
    target = ngvi.DenseGaussianVariational(jnp.ones(2), -0.5 * jnp.diag(jnp.array([-1.0, 1.0])))
    # rho = 1: diag(-1, 1); rho = 1/2: diag(0, 1) (singular); rho = 1/4: diag(1/2, 1).
    assert not bool(
        precision_is_valid(
            q.with_parameters((jnp.zeros(2), -0.5 * jnp.diag(jnp.array([0.0, 1.0]))))
        )
    )
    new_q, rho, num_backoffs = backoff_update(q, target, None, 1.0, max_backoffs=10)
    assert float(rho) == 0.25 and int(num_backoffs) == 2
    np.testing.assert_allclose(new_q.precision, np.diag([0.5, 1.0]))


@pytest.mark.parametrize("rho", [0.3, 1.0])
def test_psd_correction_dense_is_the_riemannian_step(rho):
    precision = np.array([[2.0, 0.3], [0.3, 1.0]])
    target_precision = np.array([[-1.0, 0.2], [0.2, 0.5]])  # indefinite
    mean, target_eta1 = np.array([0.5, -1.0]), np.array([1.0, 2.0])
    q = ngvi.DenseGaussianVariational(jnp.asarray(precision @ mean), jnp.asarray(-0.5 * precision))
    target = ngvi.DenseGaussianVariational(
        jnp.asarray(target_eta1), jnp.asarray(-0.5 * target_precision)
    )
    new_q = safeguarded_update(q, target, jnp.asarray(mean), rho, psd_correction=True)
    G = precision - target_precision
    expected_precision = precision - rho * G + 0.5 * rho**2 * G @ np.linalg.solve(precision, G)
    np.testing.assert_allclose(new_q.precision, expected_precision, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(np.asarray(new_q.precision)) > 0)
    # mean step of the natural gradient: mu + rho Lambda_new^-1 (eta1_t - Lambda_t mu)
    gradient = target_eta1 - target_precision @ mean
    expected_mean = mean + rho * np.linalg.solve(expected_precision, gradient)
    np.testing.assert_allclose(new_q.mean, expected_mean, atol=1e-10)


def test_psd_correction_and_floor_on_sites():
    q, target = _sites([1.0, 0.5], (0.2, 0.1)), _sites([-3.0, 0.4], (0.1, 0.0))
    mean = jnp.array([0.7, -0.2])
    new_q = safeguarded_update(q, target, mean, 1.0, psd_correction=True)
    # s_new = s - g + g^2 / (2 s), g = s - s_target: (1 - 4 + 8, 0.5 - 0.1 + 0.01)
    np.testing.assert_allclose(new_q.site_precision, [5.0, 0.41], atol=1e-12)
    np.testing.assert_allclose(new_q.lam1, [0.1 + (5.0 + 3.0) * 0.7, 0.0 + 0.01 * -0.2])
    floored = safeguarded_update(q, target, mean, 1.0, precision_floor=0.45)
    np.testing.assert_allclose(floored.site_precision, [0.45, 0.45])
    np.testing.assert_allclose(floored.lam1, [0.1 + 3.45 * 0.7, 0.05 * -0.2])


def test_invalid_safeguard_configurations_raise():
    with pytest.raises(ValueError, match="precision_floor"):
        ngvi.NaturalGradient(precision_floor=-1.0)
    with pytest.raises(ValueError, match="lr"):
        ngvi.GaussNewton(lr=0.0)
    model = tutorial_model()
    with pytest.raises(ValueError, match="W > 0"):
        ngvi.fit(model, ngvi.NaturalGradient(psd_correction=True), q=model.init_variational())
    dense = ngvi.DenseGaussianVariational(jnp.zeros(2), -0.5 * jnp.eye(2))
    with pytest.raises(ValueError, match="dense"):
        ngvi.NaturalGradient(precision_floor=0.1).init(model, dense)


def test_psd_correction_reaches_the_optimum_when_the_target_is_pd():
    model = tutorial_model()  # probit: log-concave, every target site precision is >= 0
    plain = ngvi.fit(model, ngvi.NaturalGradient(), 100, tol=1e-14, progress=False)
    corrected = ngvi.fit(
        model, ngvi.NaturalGradient(psd_correction=True), 200, tol=1e-14, progress=False
    )
    assert plain.converged and corrected.converged
    assert abs(float(plain.elbo - corrected.elbo)) < 1e-8
    assert int(np.sum(plain.history.num_backoffs)) == 0


@eqx.filter_jit
def _expected_derivatives(model, q):
    mean, variance, _ = model.latent_marginals_and_kl(q)
    return model.likelihood.expected_derivatives(model.y, mean, variance)


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
    _, _, hess = _expected_derivatives(model, gauss_newton.q)
    # The plain target site precision W_target = -E_q[H] is negative at the outliers.
    assert set(np.flatnonzero(np.asarray(hess) > 0)) >= {5, 17, 30}


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
    [ngvi.NaturalGradient(), ngvi.NaturalGradient(psd_correction=True, precision_floor=1e-3)],
)
def test_natural_gradient_compiles_once(strategy):
    model = tutorial_model()
    flipped = ngvi.Model(model.prior, model.likelihood, model.X, 1.0 - model.y)
    assert count_step_traces(strategy, [model, model, flipped]) == 1
