"""ParametricModel: a Gaussian prior and a user log-likelihood of the parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_kl

import ngvi
from ngvi.families import SiteStatistics
from ngvi.models.parametric import JointLogLikelihood


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


def _some_q(prior, seed=1):
    """A dense `q` over the weights, `w ~ N(mean, precision^-1)`, held (as the models hold it)
    over the whitened weights `v = L0^-1 (w - m0)`: precision `L0^T P L0`, mean
    `L0^-1 (mean - m0)`. Returns `(q, mean, covariance)` of `w`."""
    dim = prior.dim
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dim, dim))
    precision = A @ A.T + dim * np.eye(dim)
    mean = rng.normal(size=dim)
    L0 = np.linalg.cholesky(np.asarray(prior.covariance))
    precision_v = L0.T @ precision @ L0
    mean_v = np.linalg.solve(L0, mean - np.asarray(prior.mean))
    q = ngvi.DenseGaussianVariational(
        jnp.asarray(precision_v @ mean_v)[None, :], jnp.asarray(-0.5 * precision_v)[None]
    )
    return q, mean, np.linalg.inv(precision)


def test_elbo_estimate_matches_exact_elbo():
    linear, model = _logistic()
    q, mean, cov = _some_q(model.prior)
    exact = float(linear.elbo(q))  # Gauss-Hermite on the projected marginals
    estimate = float(model.elbo(q))
    # tolerance: 5 Monte Carlo standard errors of the log-likelihood average
    root = np.linalg.cholesky(cov)
    noise = jax.random.normal(jax.random.PRNGKey(7), (4096, 3), dtype=jnp.float64)
    samples = jnp.asarray(mean)[None, :] + noise @ jnp.asarray(root).T
    spread = float(jnp.std(jax.vmap(model.log_likelihood)(samples)))
    assert abs(estimate - exact) < 5 * spread / np.sqrt(model.num_elbo_samples)
    assert float(model.elbo(q)) == estimate  # fixed key: deterministic in q


def test_marginals_kl_and_target():
    # a full prior covariance and a non-zero prior mean, so the whitening is not trivial
    S0 = np.array([[1.0, 0.3, -0.2], [0.3, 2.0, 0.4], [-0.2, 0.4, 0.5]])
    m0 = np.array([0.5, -1.0, 0.25])
    prior = ngvi.GaussianPrior(jnp.asarray(m0), jnp.asarray(S0))
    model = ngvi.ParametricModel(prior, lambda w: -0.5 * jnp.sum(w**2))
    q, mu, cov = _some_q(prior)
    marginals, kl = model.latent_marginals_and_kl(q)
    # one observation whose latent is all of w, with its full covariance
    assert marginals.mean.shape == (1, 3) and marginals.variance.shape == (1, 3, 3)
    np.testing.assert_allclose(marginals.mean[0], mu, rtol=1e-12)
    np.testing.assert_allclose(marginals.variance[0], cov, rtol=1e-10, atol=1e-14)
    posterior_mean, posterior_cov = model.posterior(q)
    np.testing.assert_allclose(posterior_mean[0], mu, rtol=1e-12)
    np.testing.assert_allclose(posterior_cov[0], cov, rtol=1e-10, atol=1e-14)
    assert float(kl) == pytest.approx(numpy_kl(mu, cov, m0, S0), rel=1e-10)

    # target = eta_prior + site(E[g] - E[H] mu, E[H] / 2), built in w, read in v = L0^-1 (w - m0)
    g = np.array([1.0, -2.0, 0.5])
    H = -np.array([[1.0, 0.2, 0.0], [0.2, 2.0, -0.3], [0.0, -0.3, 4.0]])
    statistics = SiteStatistics(jnp.zeros(1), jnp.asarray(g)[None], jnp.asarray(H)[None])
    eta1, eta2 = model.natural_target(q, None, marginals, statistics, 1.0)
    S0_inv = np.linalg.inv(S0)
    eta1_w = S0_inv @ m0 + g - H @ mu
    eta2_w = -0.5 * S0_inv + 0.5 * H
    # eta1 w + w^T eta2 w with w = m0 + L0 v: eta1_v = L0^T (eta1_w + 2 eta2_w m0),
    # eta2_v = L0^T eta2_w L0
    L0 = np.linalg.cholesky(S0)
    np.testing.assert_allclose(eta1[0], L0.T @ (eta1_w + 2.0 * eta2_w @ m0), atol=1e-12)
    np.testing.assert_allclose(eta2[0], L0.T @ eta2_w @ L0, atol=1e-12)


def test_fit_interface():
    linear, model = _logistic()
    # one observation without inputs whose latent is the whole weight vector
    assert model.X.shape == (1, 0) and model.y.shape == (1,)
    assert model.y.dtype == model.prior.mean.dtype
    assert model.num_data == 1 and model.num_groups == 1
    assert isinstance(model.likelihood, JointLogLikelihood)
    assert model.likelihood.num_latent == 3
    w = jnp.array([0.3, -0.2, 1.0])
    sign, X = 2.0 * np.asarray(linear.y) - 1.0, np.asarray(linear.X)
    expected = np.sum(-np.logaddexp(0.0, -sign * (X @ np.asarray(w))))
    assert float(model.log_likelihood(w)) == pytest.approx(expected, rel=1e-12)
    q = model.init_variational()
    assert isinstance(q, ngvi.DenseGaussianVariational)
    assert q.eta1.shape == (1, 3) and q.eta2.shape == (1, 3, 3)
    assert isinstance(model.init_variational("moments"), ngvi.WhitenedGaussianVariational)
    mean_field = ngvi.ParametricModel(model.prior, model.log_likelihood, family="mean-field")
    assert isinstance(mean_field.init_variational(), ngvi.DiagonalGaussianVariational)
    # at the prior, the posterior is the prior
    mean, cov = model.posterior(q)
    np.testing.assert_allclose(mean[0], 0.0, atol=0)
    np.testing.assert_allclose(cov[0], np.diag([1.0, 2.0, 0.5]), rtol=1e-12, atol=1e-15)
    # deterministic expectations need independent latents: the error points to BLR
    with pytest.raises(ValueError, match="BLR"):
        ngvi.fit(model, ngvi.NaturalGradient(), 2, progress=False)
    with pytest.raises(ValueError, match="subsampled"):
        ngvi.fit(model, ngvi.BLR(), 2, batch_size=1, progress=False)
    # no inputs to predict at: the model points to `posterior`
    with pytest.raises(TypeError, match="posterior"):
        model.predict_latent(q, jnp.zeros((2, 0)))


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
    with pytest.raises(ValueError, match="family"):
        ngvi.ParametricModel(prior, jnp.sum, family="diagonal")
