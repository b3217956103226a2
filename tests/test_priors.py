import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import ngvi
from ngvi.kernels import Matern32, SquaredExponential
from ngvi.priors import GaussianPrior, GPPrior


def _random_spd(key, dim):
    A = np.asarray(jax.random.normal(key, (dim, dim)))
    return A @ A.T + 0.5 * np.eye(dim)


# ---------------------------------------------------------------- GPPrior


def test_gp_prior_moments(getkey):
    X = np.asarray(jax.random.normal(getkey(), (6, 2)))
    Z = np.asarray(jax.random.normal(getkey(), (3, 2)))
    kernel = SquaredExponential(variance=2.0, lengthscale=[0.5, 1.5])
    prior = GPPrior(kernel, mean=0.3, jitter=1e-4)
    K = np.asarray(kernel(X, X))
    np.testing.assert_allclose(prior.mean_vector(X), np.full(6, 0.3))
    np.testing.assert_allclose(prior.covariance(X), K + 1e-4 * np.eye(6), rtol=1e-14)
    np.testing.assert_allclose(prior.cross_covariance(X, Z), kernel(X, Z), rtol=1e-14)
    np.testing.assert_allclose(prior.variance(X), np.full(6, 2.0), rtol=1e-14)


def test_gp_prior_defaults_and_1d_inputs():
    prior = GPPrior(Matern32())
    x = jnp.linspace(0.0, 1.0, 5)
    assert prior.jitter == 1e-6 and float(prior.mean) == 0.0
    assert prior.mean_vector(x).shape == (5,)
    np.testing.assert_allclose(np.diag(prior.covariance(x)), 1.0 + 1e-6, rtol=1e-14)


@pytest.mark.parametrize("jitter", [0.0, -1e-6, np.nan])
def test_gp_prior_rejects_bad_jitter(jitter):
    with pytest.raises(ValueError, match="jitter"):
        GPPrior(SquaredExponential(), jitter=jitter)


def test_gp_prior_rejects_bad_mean_and_kernel():
    with pytest.raises(ValueError, match="mean"):
        GPPrior(SquaredExponential(), mean=np.nan)
    with pytest.raises(ValueError, match="mean"):
        GPPrior(SquaredExponential(), mean=[[0.0, 1.0]])
    with pytest.raises(ValueError, match="kernel"):
        GPPrior(lambda x, y: x @ y.T)
    with pytest.raises(ValueError, match="2 kernels but 3 prior means"):
        GPPrior([SquaredExponential(), SquaredExponential()], mean=[0.0, 1.0, 2.0])


def test_gp_prior_per_latent_must_match_the_likelihood():
    prior = GPPrior(SquaredExponential(), mean=[0.0, 1.0])  # two latent functions
    assert prior.num_latent == 2 and prior.mean_vector(np.zeros((3, 1))).shape == (2, 3)
    with pytest.raises(ValueError, match="2 latent functions.*likelihood has 1"):
        ngvi.Model(prior, ngvi.likelihoods.Probit(), np.zeros(4), np.zeros(4))


def test_gp_prior_gradients_reach_kernel_and_mean(getkey):
    X = jax.random.normal(getkey(), (5, 1))

    @eqx.filter_grad
    def grad(prior):
        return jnp.sum(prior.covariance(X)) + jnp.sum(prior.mean_vector(X))

    g = grad(GPPrior(Matern32(), mean=1.0))
    np.testing.assert_allclose(g.mean, 5.0)
    assert np.isfinite(g.kernel.log_lengthscale) and np.isfinite(g.kernel.log_variance)


# ---------------------------------------------------------------- GaussianPrior


def test_gaussian_prior_natural_parameters_and_precision(getkey):
    Sigma, mu = _random_spd(getkey(), 4), np.array([0.5, -1.0, 2.0, 0.0])
    prior = GaussianPrior(mu, Sigma)
    eta1, eta2 = prior.natural_parameters()
    P = np.linalg.inv(Sigma)
    np.testing.assert_allclose(prior.precision(), P, rtol=1e-10)
    np.testing.assert_allclose(eta1, P @ mu, rtol=1e-10)
    np.testing.assert_allclose(eta2, -0.5 * P, rtol=1e-10)
    L = np.asarray(prior.cholesky())
    np.testing.assert_allclose(L, np.tril(L))
    np.testing.assert_allclose(L @ L.T, Sigma, rtol=1e-12)
    assert prior.dim == 4


def test_gaussian_prior_log_prob_matches_scipy(getkey):
    Sigma, mu = _random_spd(getkey(), 3), np.array([1.0, 0.0, -2.0])
    prior = GaussianPrior(mu, Sigma)
    reference = scipy.stats.multivariate_normal(mu, Sigma)
    for w in np.asarray(jax.random.normal(getkey(), (5, 3))) * 2:
        np.testing.assert_allclose(prior.log_prob(w), reference.logpdf(w), rtol=1e-12)


@pytest.mark.parametrize(
    "covariance, expected",
    [(2.5, 2.5 * np.eye(3)), (np.array([1.0, 2.0, 3.0]), np.diag([1.0, 2.0, 3.0]))],
)
def test_gaussian_prior_covariance_forms(covariance, expected):
    prior = GaussianPrior(np.zeros(3), covariance)
    np.testing.assert_allclose(prior.covariance, expected)
    np.testing.assert_allclose(prior.precision(), np.linalg.inv(expected), rtol=1e-12)


def test_gaussian_prior_to_distribution(getkey):
    Sigma, mu = _random_spd(getkey(), 3), np.array([1.0, 0.0, -2.0])
    prior = GaussianPrior(mu, Sigma)
    dist = prior.to_distribution()
    assert isinstance(dist, distrax.MultivariateNormalTri)
    np.testing.assert_allclose(dist.covariance(), Sigma, rtol=1e-12)
    w = jnp.array([0.1, 0.2, 0.3])
    np.testing.assert_allclose(dist.log_prob(w), prior.log_prob(w), rtol=1e-12)


def test_gaussian_prior_rejects_non_pd():
    with pytest.raises(ValueError, match="covariance is not positive definite"):
        GaussianPrior(np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(ValueError, match="covariance"):
        GaussianPrior(np.zeros(2), -1.0)


def test_gaussian_prior_rejects_asymmetric_and_non_finite():
    with pytest.raises(ValueError, match="symmetric"):
        GaussianPrior(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="covariance"):
        GaussianPrior(np.zeros(2), np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="mean"):
        GaussianPrior(np.array([0.0, np.inf]), 1.0)


@pytest.mark.parametrize(
    "mean, covariance, match",
    [
        (np.zeros(3), np.eye(2), r"\(3, 3\).*\(2, 2\)"),
        (np.zeros(3), np.ones(2), r"\(2,\)"),
        (np.zeros((3, 1)), np.eye(3), "mean"),
        (0.0, 1.0, "mean"),
    ],
)
def test_gaussian_prior_rejects_shape_mismatch(mean, covariance, match):
    with pytest.raises(ValueError, match=match):
        GaussianPrior(mean, covariance)


def test_gaussian_prior_under_jit(getkey):
    Sigma, mu = _random_spd(getkey(), 3), np.ones(3)

    @jax.jit
    def nat(m, S):
        return GaussianPrior(m, S).natural_parameters()[0]

    np.testing.assert_allclose(nat(mu, Sigma), np.linalg.solve(Sigma, mu), rtol=1e-10)


def test_float32():
    with jax.enable_x64(False):
        Sigma = jnp.asarray([[2.0, 0.3], [0.3, 1.0]], jnp.float32)
        prior = GaussianPrior(jnp.zeros(2, jnp.float32), Sigma)
        eta1, eta2 = prior.natural_parameters()
        assert eta2.dtype == jnp.float32
        assert np.all(np.isfinite(eta2)) and np.isfinite(prior.log_prob(jnp.ones(2)))
        gp = GPPrior(SquaredExponential(), jitter=1e-6)
        K = gp.covariance(jnp.linspace(0, 1, 10, dtype=jnp.float32))
        assert K.dtype == jnp.float32 and np.all(np.isfinite(K))
