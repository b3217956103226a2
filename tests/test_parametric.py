"""ParametricModel: a Gaussian prior and a user log-likelihood of the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngvi


def _logistic(seed=0, n=60, dim=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    y = (rng.uniform(size=n) < 0.5).astype(float)
    prior = ngvi.GaussianPrior(jnp.zeros(dim), jnp.array([1.0, 2.0, 0.5]))
    linear = ngvi.Model(prior, ngvi.likelihoods.BernoulliLogit(), X, y)
    sign = 2.0 * linear.y - 1.0

    def log_likelihood(w):
        return jnp.sum(jax.nn.log_sigmoid(sign * (linear.X @ w)))

    return linear, ngvi.ParametricModel(prior, log_likelihood, num_elbo_samples=4096)


def _some_q(dim, seed=1):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dim, dim))
    precision = A @ A.T + dim * np.eye(dim)
    mean = rng.normal(size=dim)
    return ngvi.DenseGaussianVariational(
        jnp.asarray(precision @ mean), jnp.asarray(-0.5 * precision)
    )


def test_elbo_estimate_matches_exact_elbo():
    linear, model = _logistic()
    q = _some_q(3)
    exact = float(linear.elbo(q))  # Gauss-Hermite on the projected marginals
    estimate = float(model.elbo(q))
    # tolerance: 5 Monte Carlo standard errors of the log-likelihood average
    samples = q.sample(jax.random.PRNGKey(7), 4096)
    spread = float(jnp.std(jax.vmap(model.log_likelihood)(samples)))
    assert abs(estimate - exact) < 5 * spread / np.sqrt(model.num_elbo_samples)
    assert float(model.elbo(q)) == estimate  # fixed key: deterministic in q


def test_marginals_kl_and_target():
    _, model = _logistic()
    q = _some_q(3)
    mean, variance, kl = model.latent_marginals_and_kl(q)
    cov = np.asarray(q.covariance)
    np.testing.assert_allclose(mean, q.mean, rtol=1e-12)
    np.testing.assert_allclose(variance, np.diag(cov), rtol=1e-12)
    S0 = np.diag([1.0, 2.0, 0.5])
    mu = np.asarray(q.mean)
    expected_kl = 0.5 * (
        np.trace(np.linalg.solve(S0, cov))
        + mu @ np.linalg.solve(S0, mu)
        - 3
        + np.log(np.linalg.det(S0) / np.linalg.det(cov))
    )
    assert float(kl) == pytest.approx(expected_kl, rel=1e-10)
    lam1, lam2 = jnp.array([1.0, -2.0, 0.5]), -jnp.array([0.5, 1.0, 2.0])
    target = model.natural_target(q, lam1, lam2)
    np.testing.assert_allclose(target.eta1, lam1, atol=1e-12)  # prior mean is zero
    np.testing.assert_allclose(target.eta2, -0.5 * np.linalg.inv(S0) + np.diag(lam2), atol=1e-12)


def test_fit_interface():
    _, model = _logistic()
    assert model.y.shape == (0,) and model.y.dtype == model.prior.mean.dtype
    assert isinstance(model.init_variational(), ngvi.DenseGaussianVariational)
    with pytest.raises(ValueError, match="BLR"):
        _ = model.likelihood


def test_bad_input():
    prior = ngvi.GaussianPrior(jnp.zeros(2), 1.0)
    with pytest.raises(ValueError, match="GaussianPrior"):
        ngvi.ParametricModel("prior", lambda w: jnp.sum(w))
    with pytest.raises(ValueError, match="callable"):
        ngvi.ParametricModel(prior, 3.0)
    with pytest.raises(ValueError, match="scalar"):
        ngvi.ParametricModel(prior, lambda w: w)
    with pytest.raises(ValueError, match="failed"):
        ngvi.ParametricModel(prior, lambda w: w @ jnp.ones(5))
    with pytest.raises(ValueError, match="num_elbo_samples"):
        ngvi.ParametricModel(prior, jnp.sum, num_elbo_samples=0)
