"""`ngvi.Model`: construction, input validation (before anything compiles), ELBO pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from helpers import tutorial_data, tutorial_model

import ngvi
from ngvi.likelihoods import Gaussian, Poisson, Probit


def se_prior(**kwargs):
    return ngvi.GPPrior(ngvi.kernels.SquaredExponential(1.0, 0.7), **kwargs)


class Indefinite(ngvi.kernels.AbstractKernel):
    """Not a covariance function: `k(x, x') = -|x - x'|^2` has zero trace, so its Gram
    matrix has a negative eigenvalue."""

    def evaluate(self, x1, x2):
        return -jnp.sum((x1 - x2) ** 2)


class NaNKernel(ngvi.kernels.AbstractKernel):
    def evaluate(self, x1, x2):
        return jnp.log(jnp.sum(x1 - x2))  # log of negative numbers -> NaN


def test_model_dispatch_and_shapes():
    X, y = tutorial_data()
    model = ngvi.Model(se_prior(), Probit(), X, y)
    assert isinstance(model, ngvi.GPModel)
    assert model.X.shape == (30, 1) and model.y.shape == (30,)
    assert model.X.dtype == jnp.float64
    # {-1, +1} labels are mapped to {0, 1}
    np.testing.assert_array_equal(model.y, (np.asarray(y) > 0).astype(float))
    # y of shape (n, 1) is accepted
    model2 = ngvi.Model(se_prior(), Probit(), np.asarray(X)[:, None], np.asarray(y)[:, None])
    np.testing.assert_array_equal(model2.y, model.y)
    linear = ngvi.Model(
        ngvi.GaussianPrior(jnp.zeros(2), 4.0), Gaussian(), np.ones((5, 2)), np.ones(5)
    )
    assert isinstance(linear, ngvi.LinearModel) and not linear.diagonal
    assert linear.num_data == 5
    diag = ngvi.Model(
        ngvi.GaussianPrior(jnp.zeros(2), 4.0),
        Gaussian(),
        np.ones((5, 2)),
        np.ones(5),
        diagonal=True,
    )
    assert isinstance(diag.init_variational(), ngvi.DiagonalGaussianVariational)
    assert isinstance(linear.init_variational(), ngvi.DenseGaussianVariational)


X5 = np.linspace(0, 1, 5)
Y5 = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
BAD_INPUTS = {
    "mismatched_rows": (dict(X=np.linspace(0, 1, 6)), "same number of rows"),
    "nan_in_X": (dict(X=np.array([0.0, np.nan, 0.5, 0.7, 1.0])), "`X` contains 1 NaN/inf"),
    "inf_in_X": (dict(X=np.array([0.0, 0.1, np.inf, 0.7, 1.0])), "`X` contains 1 NaN/inf"),
    "nan_in_y": (dict(y=np.array([0.0, np.nan, 1.0, 0.0, 1.0])), "`y` contains 1 NaN/inf"),
    "inf_in_y": (dict(y=np.array([0.0, -np.inf, 1.0, 0.0, 1.0])), "`y` contains 1 NaN/inf"),
    "probit_label_3": (dict(y=np.array([0.0, 1.0, 3.0, 0.0, 1.0])), r"found 3 at index 2"),
    "probit_mixed_encoding": (dict(y=np.array([0.0, 1.0, -1.0, 0.0, 1.0])), "mix"),
    "poisson_negative": (
        dict(likelihood=Poisson(), y=np.array([0.0, 2.0, -1.0, 3.0, 1.0])),
        r"non-negative integers; found -1 at index 2",
    ),
    "poisson_non_integer": (
        dict(likelihood=Poisson(), y=np.array([0.0, 2.5, 1.0, 3.0, 1.0])),
        r"non-negative integers; found 2.5 at index 1",
    ),
    "X_3d": (dict(X=np.zeros((5, 1, 1))), r"shape \(n,\) or \(n, d\)"),
    "y_2d": (dict(y=np.zeros((5, 2))), r"`y` must have shape \(n,\)"),
    "non_numeric": (dict(X=np.array(["a", "b", "c", "d", "e"])), "`X` must be numeric"),
    "indefinite_kernel": (dict(prior=ngvi.GPPrior(Indefinite())), "not positive definite"),
    "nan_kernel": (dict(prior=ngvi.GPPrior(NaNKernel())), "NaN/inf"),
    "duplicates_tiny_jitter": (
        dict(X=np.array([0.0, 0.0, 0.5, 0.5, 1.0]), prior=se_prior(jitter=1e-20)),
        "not positive definite",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_before_fitting(case):
    overrides, match = BAD_INPUTS[case]
    arguments = dict(prior=se_prior(), likelihood=Probit(), X=X5, y=Y5) | overrides
    with pytest.raises(ValueError, match=match):
        ngvi.Model(**arguments)


def test_duplicate_inputs_with_default_jitter_are_fine():
    model = ngvi.Model(se_prior(), Probit(), np.array([0.0, 0.0, 0.5, 0.5, 1.0]), Y5)
    result = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=20, progress=False)
    assert np.isfinite(float(result.elbo))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ngvi.kernels.SquaredExponential(variance=0.0), "`variance` must be positive"),
        (lambda: ngvi.kernels.SquaredExponential(variance=-1.0), "`variance` must be positive"),
        (lambda: ngvi.kernels.Matern32(lengthscale=0.0), "`lengthscale` must be positive"),
        (lambda: ngvi.kernels.Matern52(lengthscale=-2.0), "`lengthscale` must be positive"),
        (lambda: ngvi.kernels.SquaredExponential(lengthscale=np.nan), "`lengthscale` must be"),
        (lambda: se_prior(jitter=0.0), "`jitter` must be positive"),
        (lambda: se_prior(jitter=-1e-6), "`jitter` must be positive"),
        (lambda: Gaussian(variance=0.0), "`variance` must be positive"),
        (lambda: Poisson(exposure=np.array([1.0, -1.0])), "`exposure` must be positive"),
        (lambda: ngvi.GaussianPrior(jnp.zeros(2), -1.0), "not positive definite"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_linear_model_checks():
    prior = ngvi.GaussianPrior(jnp.zeros(3), 4.0)
    with pytest.raises(ValueError, match="3 columns|dimension 3"):
        ngvi.Model(prior, Gaussian(), np.ones((5, 2)), np.ones(5))
    with pytest.raises(TypeError, match="AbstractLikelihood"):
        ngvi.Model(prior, object(), np.ones((5, 3)), np.ones(5))
    with pytest.raises(TypeError, match="GPPrior or a GaussianPrior"):
        ngvi.Model(object(), Gaussian(), np.ones((5, 3)), np.ones(5))


def test_bad_inputs_fail_before_any_trace(monkeypatch):
    """Validation happens on the host: the likelihood's (traceable) log_prob is never
    called and no fit loop is reached."""
    calls = []
    monkeypatch.setattr(Probit, "log_prob", lambda self, f, y: calls.append(1))
    with pytest.raises(ValueError):
        ngvi.Model(se_prior(), Probit(), X5, np.array([0.0, 1.0, 3.0, 0.0, 1.0]))
    assert calls == []


def gp_problem():
    X, y = tutorial_data()
    model = tutorial_model()
    rng = np.random.default_rng(0)
    lam1 = rng.normal(size=30)
    W = rng.uniform(0.0, 2.0, size=30)
    q = model.variational(jnp.asarray(lam1), jnp.asarray(-0.5 * W))
    K = np.asarray(model.prior.covariance(model.X))
    Kinv = np.linalg.inv(K)
    Sigma = np.linalg.inv(Kinv + np.diag(W))
    mu = Sigma @ lam1  # zero prior mean
    return model, q, K, mu, Sigma


def test_gp_model_prior_and_variational():
    model = tutorial_model()
    x = np.asarray(model.X[:, 0])
    K = 1.5 * np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2) + 1e-6 * np.eye(30)
    q0 = model.init_variational()
    np.testing.assert_allclose(q0.prior_covariance, K, rtol=1e-12)
    np.testing.assert_array_equal(q0.lam1, 0.0)
    np.testing.assert_array_equal(q0.lam2, 0.0)
    np.testing.assert_allclose(q0.covariance, K, rtol=1e-12)
    target = model.natural_target(q0, jnp.ones(30), -jnp.ones(30))
    np.testing.assert_array_equal(target.lam1, 1.0)
    np.testing.assert_array_equal(target.lam2, -1.0)


def test_gp_model_elbo_against_gauss_hermite():
    """`model.elbo` == independent 60-point Gauss-Hermite of log Phi minus the dense KL."""
    model, q, K, mu, Sigma = gp_problem()
    mean, variance, kl = model.latent_marginals_and_kl(q)
    np.testing.assert_allclose(mean, mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(variance, np.diag(Sigma), rtol=1e-6, atol=1e-8)
    S0inv = np.linalg.inv(K)
    want_kl = 0.5 * (
        np.trace(S0inv @ Sigma)
        + mu @ S0inv @ mu
        - 30
        + np.linalg.slogdet(K)[1]
        - np.linalg.slogdet(Sigma)[1]
    )
    np.testing.assert_allclose(kl, want_kl, rtol=1e-5)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    sign = 2 * np.asarray(model.y) - 1
    f = mu[:, None] + np.sqrt(np.diag(Sigma))[:, None] * nodes[None, :]
    expected = (scipy.special.log_ndtr(sign[:, None] * f) * weights).sum()
    np.testing.assert_allclose(model.elbo(q), expected - want_kl, rtol=1e-6)


def test_linear_model_pieces():
    rng = np.random.default_rng(1)
    n, dim = 8, 3
    X = rng.normal(size=(n, dim))
    y = rng.normal(size=n)
    cov0 = np.diag([4.0, 2.0, 1.0])
    m0 = np.array([0.5, -0.2, 0.0])
    model = ngvi.Model(ngvi.GaussianPrior(jnp.asarray(m0), jnp.asarray(cov0)), Gaussian(0.5), X, y)
    q0 = model.init_variational()
    np.testing.assert_allclose(q0.mean, m0, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(q0.covariance, cov0, rtol=1e-13)
    lam1 = rng.normal(size=n)
    lam2 = -rng.uniform(0.1, 1.0, size=n)
    target = model.natural_target(q0, jnp.asarray(lam1), jnp.asarray(lam2))
    P0 = np.linalg.inv(cov0)
    np.testing.assert_allclose(target.eta1, P0 @ m0 + X.T @ lam1, rtol=1e-12)
    np.testing.assert_allclose(target.eta2, -0.5 * P0 + X.T @ np.diag(lam2) @ X, rtol=1e-12)
    mean, variance, kl = model.latent_marginals_and_kl(target)
    Sigma = np.linalg.inv(-2 * np.asarray(target.eta2))
    mu = Sigma @ np.asarray(target.eta1)
    np.testing.assert_allclose(mean, X @ mu, rtol=1e-10)
    np.testing.assert_allclose(variance, np.diag(X @ Sigma @ X.T), rtol=1e-10)
    want_kl = 0.5 * (
        np.trace(P0 @ Sigma)
        + (mu - m0) @ P0 @ (mu - m0)
        - dim
        + np.linalg.slogdet(cov0)[1]
        - np.linalg.slogdet(Sigma)[1]
    )
    np.testing.assert_allclose(kl, want_kl, rtol=1e-10)
    want_elbo = (
        np.sum(
            scipy.stats.norm.logpdf(y, X @ mu, np.sqrt(0.5)) - np.diag(X @ Sigma @ X.T) / (2 * 0.5)
        )
        - want_kl
    )
    np.testing.assert_allclose(model.elbo(target), want_elbo, rtol=1e-10)

    diag_model = ngvi.Model(
        ngvi.GaussianPrior(jnp.asarray(m0), jnp.asarray(cov0)), Gaussian(0.5), X, y, diagonal=True
    )
    dq = diag_model.natural_target(
        diag_model.init_variational(), jnp.asarray(lam1), jnp.asarray(lam2)
    )
    # mean-field natural-gradient target (lr = 1) at q = prior, mu = m0: with
    # E[g_f] = lam1 + 2 lam2 X mu and E[H_f] = 2 lam2, in weight space
    # g_bar = X^T E[g_f] - P0 (mu - m0), H_bar = X^T diag(E[H_f]) X - P0,
    # eta1 = g_bar - diag(H_bar) mu, eta2 = 1/2 diag(H_bar).
    mu = m0
    g_bar = X.T @ (lam1 + 2 * lam2 * (X @ mu)) - P0 @ (mu - m0)
    h_bar = X.T @ np.diag(2 * lam2) @ X - P0
    np.testing.assert_allclose(dq.eta1, g_bar - np.diag(h_bar) * mu, rtol=1e-12)
    np.testing.assert_allclose(dq.eta2, 0.5 * np.diag(h_bar), rtol=1e-12)


def test_model_is_a_pytree_of_arrays():
    """Same-shape data give the same tree structure, so jit does not retrace on new data."""
    model = tutorial_model()
    other = ngvi.Model(model.prior, Probit(), np.asarray(model.X) + 1.0, 1 - np.asarray(model.y))
    assert jax.tree_util.tree_structure(model) == jax.tree_util.tree_structure(other)


def test_float32_kernel_matrix_error_suggests_a_jitter():
    # 400 nearly coincident inputs: in float32 the rounding of K swamps a jitter of 1e-6.
    X = np.linspace(0.0, 1e-3, 400)
    y = (X > 5e-4).astype(float)
    with jax.enable_x64(False):
        prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=1.0))
        with pytest.raises(ValueError, match="In float32 the rounding of K alone"):
            ngvi.Model(prior, Probit(), X, y)


def test_whitened_families_refuse_a_singular_kernel_matrix():
    # Built directly (no host-side check): duplicate inputs and a negligible jitter make K
    # singular, so chol(K) has NaNs; Adam and BLR(diagonal) must say so, not start from NaN.
    X = jnp.array([[0.0], [0.0], [1.0]])
    prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential(), jitter=1e-300)
    model = ngvi.GPModel(prior, Probit(), X, jnp.array([0.0, 1.0, 1.0]))
    for strategy in (ngvi.Adam(), ngvi.BLR(family="diagonal")):
        with pytest.raises(ValueError, match="not numerically positive definite"):
            strategy.init_variational(model)
