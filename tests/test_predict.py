"""`ngvi.predict` against dense NumPy formulas with explicit inverses."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import ngvi
from ngvi.likelihoods import Gaussian, Poisson, Probit

JITTER = 1e-4  # keeps K well enough conditioned for explicit inverses in the reference


def se(x1, x2, variance=1.2, lengthscale=0.9):
    return variance * np.exp(-0.5 * (x1[:, None] - x2[None, :]) ** 2 / lengthscale**2)


def gp_setup(likelihood, y, mean=0.0):
    x = np.linspace(-2.5, 2.5, len(y))
    prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential(1.2, 0.9), mean=mean, jitter=JITTER)
    model = ngvi.Model(prior, likelihood, x, y)
    result = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=30, progress=False)
    return x, model, result.q


def dense_reference(x, model, q, x_new, m0=0.0):
    """mean* = m0 + K*^T K^-1 (mu - m0), var* = k** - K*^T K^-1 (K - Sigma) K^-1 K*, with
    `(mu, Sigma)` the posterior of f(X) that `q` describes under `model`."""
    K = se(x, x) + JITTER * np.eye(len(x))
    Kinv = np.linalg.inv(K)
    cross = se(x, x_new)
    mean, covariance = model.posterior(q)
    mu, Sigma = np.asarray(mean[0]), np.asarray(covariance[0])
    mean = m0 + cross.T @ Kinv @ (mu - m0)
    var = 1.2 - np.einsum("ij,ij->j", cross, Kinv @ (K - Sigma) @ Kinv @ cross)
    return mean, var


X_NEW = np.array([-3.5, -1.1, 0.05, 0.7, 2.2, 9.0])


def probit_case():
    x = np.linspace(-2.5, 2.5, 20)
    y = (np.sin(2 * x) > 0).astype(float)
    y[[3, 11]] = 1 - y[[3, 11]]
    return gp_setup(Probit(), y)


def test_gp_latent_against_dense_formulas():
    x, model, q = probit_case()
    pred = ngvi.predict(model, q, X_NEW)
    mean, var = dense_reference(x, model, q, X_NEW)
    np.testing.assert_allclose(pred.latent_mean, mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(pred.latent_variance, var, rtol=1e-6, atol=1e-8)
    # far from the data the prior comes back
    np.testing.assert_allclose(pred.latent_mean[-1], 0.0, atol=1e-8)
    np.testing.assert_allclose(pred.latent_variance[-1], 1.2, rtol=1e-8)
    assert pred.latent_mean.shape == pred.latent_variance.shape == (6,)


def test_probit_probabilities():
    x, model, q = probit_case()
    pred = ngvi.predict(model, q, X_NEW)
    z = np.asarray(pred.latent_mean) / np.sqrt(1 + np.asarray(pred.latent_variance))
    np.testing.assert_allclose(pred.mean, scipy.stats.norm.cdf(z), rtol=1e-12)
    np.testing.assert_array_equal(pred.probability, pred.mean)
    np.testing.assert_allclose(pred.variance, pred.mean * (1 - pred.mean), rtol=1e-12)
    # the predictive probability is E_q[Phi(f)] (independent 80-point Gauss-Hermite)
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    f = (
        np.asarray(pred.latent_mean)[:, None]
        + np.sqrt(np.asarray(pred.latent_variance))[:, None] * nodes[None, :]
    )
    np.testing.assert_allclose(
        pred.mean, scipy.stats.norm.cdf(f) @ weights / weights.sum(), rtol=1e-10
    )


def test_poisson_rate():
    x = np.linspace(-2.5, 2.5, 15)
    counts = np.round(3 * np.exp(-(x**2))).astype(float)
    x, model, q = gp_setup(Poisson(), counts, mean=0.5)
    pred = ngvi.predict(model, q, X_NEW)
    mean, var = dense_reference(x, model, q, X_NEW, m0=0.5)
    np.testing.assert_allclose(pred.latent_mean, mean, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(pred.latent_variance, var, rtol=1e-6, atol=1e-8)
    rate = np.exp(mean + var / 2)
    np.testing.assert_allclose(pred.mean, rate, rtol=1e-6)
    # Var[y] = E[rate] + Var[rate] = rate + (exp(v) - 1) rate^2
    np.testing.assert_allclose(pred.variance, rate + np.expm1(var) * rate**2, rtol=1e-6)


def test_gaussian_predictive_adds_noise():
    x = np.linspace(-2.5, 2.5, 12)
    y = np.sin(x)
    s2 = 0.05
    x, model, q = gp_setup(Gaussian(s2), y)
    pred = ngvi.predict(model, q, X_NEW)
    # exact GP regression with the jittered training covariance
    K = se(x, x) + JITTER * np.eye(12)
    cross = se(x, X_NEW)
    A = K + s2 * np.eye(12)
    mean = cross.T @ np.linalg.solve(A, y)
    var = 1.2 - np.einsum("ij,ij->j", cross, np.linalg.solve(A, cross))
    np.testing.assert_allclose(pred.latent_mean, mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pred.latent_variance, var, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(pred.mean, mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(pred.variance, var + s2, rtol=1e-7)


def training_marginals(model, q):
    marginals, _ = model.latent_marginals_and_kl(q)
    return marginals.mean[:, 0], marginals.variance[:, 0]


def test_predicting_at_training_inputs_reproduces_marginals():
    """The training covariance carries the jitter and new-point predictions do not, so the two
    agree up to O(jitter)."""
    x, model, q = probit_case()
    pred = ngvi.predict(model, q, x)
    mean, variance = training_marginals(model, q)
    np.testing.assert_allclose(pred.latent_mean, mean, atol=10 * JITTER)
    np.testing.assert_allclose(pred.latent_variance, variance, atol=10 * JITTER)
    # exact with a tiny jitter
    prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential(1.2, 0.9), jitter=1e-9)
    model = ngvi.Model(prior, Probit(), x, np.asarray(model.y))
    q = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=30, progress=False).q
    pred = ngvi.predict(model, q, x[:, None])  # (m, 1) inputs work too
    mean, variance = training_marginals(model, q)
    np.testing.assert_allclose(pred.latent_mean, mean, atol=1e-7)
    np.testing.assert_allclose(pred.latent_variance, variance, atol=1e-7)


def test_prior_predictions():
    x, model, _ = probit_case()
    pred = ngvi.predict(model, model.init_variational(), X_NEW)
    np.testing.assert_allclose(pred.latent_mean, 0.0, atol=1e-14)
    np.testing.assert_allclose(pred.latent_variance, 1.2, rtol=1e-12)
    np.testing.assert_allclose(pred.mean, 0.5, rtol=1e-12)


@pytest.mark.parametrize("family", ["full", "mean-field"])
def test_linear_model_predictions(family):
    rng = np.random.default_rng(0)
    design = np.column_stack([np.ones(30), rng.normal(size=(30, 2))])
    y = design @ np.array([0.3, -1.0, 0.5]) + 0.2 * rng.normal(size=30)
    model = ngvi.Model(
        ngvi.GaussianPrior(jnp.zeros(3), 4.0), Gaussian(0.04), design, y, family=family
    )
    q = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=100, progress=False).q
    new = rng.normal(size=(5, 3))
    pred = ngvi.predict(model, q, new)
    mean, covariance = model.posterior(q)  # over the weights w
    mu, Sigma = np.asarray(mean[0]), np.asarray(covariance[0])
    np.testing.assert_allclose(pred.latent_mean, new @ mu, rtol=1e-10)
    np.testing.assert_allclose(pred.latent_variance, np.diag(new @ Sigma @ new.T), rtol=1e-10)
    np.testing.assert_allclose(pred.variance, pred.latent_variance + 0.04, rtol=1e-10)
    precision = np.eye(3) / 4.0 + design.T @ design / 0.04
    exact_mean = np.linalg.solve(precision, design.T @ y / 0.04)
    if family == "mean-field":
        # isotropic prior: mean field over w. For a Gaussian posterior its optimum has the exact
        # mean and variances 1 / diag(precision) (the fixed point is approached linearly, and
        # the default tol stops within ~1e-6 of it)
        np.testing.assert_allclose(Sigma, np.diag(1.0 / np.diag(precision)), rtol=1e-10, atol=0)
        np.testing.assert_allclose(mu, exact_mean, atol=1e-5)
    else:  # exact Bayesian linear regression
        np.testing.assert_allclose(pred.latent_mean, new @ exact_mean, rtol=1e-8)


def test_bad_new_inputs():
    _, model, q = probit_case()
    with pytest.raises(ValueError, match="columns"):
        ngvi.predict(model, q, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="`X_new` contains 1 NaN/inf"):
        ngvi.predict(model, q, np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"`X_new` must have shape"):
        ngvi.predict(model, q, np.zeros((3, 1, 1)))
