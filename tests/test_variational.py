"""The variational families, against dense NumPy formulas with explicit inverses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from helpers import numpy_kl

import ngvi
from ngvi.variational import dense_kl


def se_kernel(x, variance=1.3, lengthscale=0.8, jitter=1e-4):
    d = x[:, None] - x[None, :]
    return variance * np.exp(-0.5 * d**2 / lengthscale**2) + jitter * np.eye(len(x))


SITE_CASES = {
    "generic": np.array([0.5, 2.0, 0.1, 3.0, 1.0, 0.7, 0.2, 4.0]),
    "zeros_and_tiny": np.array([0.0, 2.0, 1e-12, 0.0, 1.0, 1e-12, 0.2, 0.0]),
    "all_zero": np.zeros(8),
    "huge": np.array([1e8, 2.0, 1e6, 0.3, 1.0, 0.7, 1e7, 4.0]),
}


def site_problem(case):
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(-2, 2, size=8))
    K = se_kernel(x)
    m0 = 0.3 * np.ones(8)
    W = SITE_CASES[case]
    lam1 = rng.normal(size=8)
    q = ngvi.SiteGaussianVariational(
        jnp.asarray(m0), jnp.asarray(K), jnp.asarray(lam1), jnp.asarray(-0.5 * W)
    )
    Kinv = np.linalg.inv(K)
    Sigma = np.linalg.inv(Kinv + np.diag(W))
    mu = Sigma @ (Kinv @ m0 + lam1)
    return q, K, m0, mu, Sigma


@pytest.mark.parametrize("case", list(SITE_CASES))
def test_site_gaussian_moments(case):
    q, K, m0, mu, Sigma = site_problem(case)
    scale = np.abs(mu).max()
    np.testing.assert_allclose(q.mean, mu, rtol=1e-7, atol=1e-8 * scale)
    np.testing.assert_allclose(q.covariance, Sigma, rtol=1e-7, atol=1e-9)
    mean, variance = q.marginals()
    np.testing.assert_allclose(mean, mu, rtol=1e-7, atol=1e-8 * scale)
    np.testing.assert_allclose(variance, np.diag(Sigma), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(q.site_precision, SITE_CASES[case])
    L = np.asarray(q.scale_tril())
    np.testing.assert_allclose(L @ L.T, Sigma, rtol=1e-7, atol=1e-9)
    assert np.allclose(L, np.tril(L))


@pytest.mark.parametrize("case", list(SITE_CASES))
def test_site_gaussian_kl_and_entropy(case):
    q, K, m0, mu, Sigma = site_problem(case)
    want_kl = numpy_kl(mu, Sigma, m0, K)
    np.testing.assert_allclose(q.kl_to_prior(), want_kl, rtol=1e-7, atol=1e-8)
    want_entropy = scipy.stats.multivariate_normal(mu, Sigma).entropy()
    np.testing.assert_allclose(q.entropy(), want_entropy, rtol=1e-8)
    np.testing.assert_allclose(ngvi.gaussian_entropy(q.scale_tril()), want_entropy, rtol=1e-7)


def test_site_gaussian_zero_site_precision():
    """W = 0: Sigma = K, mu = m0 + K lam1, KL = 1/2 lam1^T K lam1; and zero sites are the prior."""
    q, K, m0, mu, Sigma = site_problem("all_zero")
    lam1 = np.asarray(q.lam1)
    np.testing.assert_allclose(q.mean, m0 + K @ lam1, rtol=1e-13)
    np.testing.assert_allclose(q.covariance, K, rtol=1e-14)
    np.testing.assert_allclose(q.kl_to_prior(), 0.5 * lam1 @ K @ lam1, rtol=1e-12)
    prior = q.with_parameters((jnp.zeros(8), jnp.zeros(8)))
    np.testing.assert_allclose(prior.mean, m0, rtol=1e-14)
    np.testing.assert_allclose(prior.kl_to_prior(), 0.0, atol=1e-14)


def test_site_gaussian_parameters_roundtrip():
    q, *_ = site_problem("generic")
    lam1, lam2 = q.parameters
    np.testing.assert_array_equal(lam1, q.lam1)
    np.testing.assert_array_equal(lam2, q.lam2)
    new = q.with_parameters((2 * lam1, lam2))
    assert isinstance(new, ngvi.SiteGaussianVariational)
    np.testing.assert_array_equal(new.lam1, 2 * lam1)
    np.testing.assert_array_equal(new.prior_covariance, q.prior_covariance)


def test_site_gaussian_ill_conditioned_kernel_stays_finite():
    """cond(K) ~ 1e10: the B-form never inverts K, so marginals and KL stay finite and the
    variances positive."""
    x = np.linspace(-3, 3, 60)
    K = se_kernel(x, variance=1.5, lengthscale=1.0, jitter=1e-8)
    assert np.linalg.cond(K) > 1e9
    W = np.full(60, 0.5)
    q = ngvi.SiteGaussianVariational(
        jnp.zeros(60), jnp.asarray(K), jnp.asarray(np.sin(x)), jnp.asarray(-0.5 * W)
    )
    mean, variance = q.marginals()
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(variance))
    assert np.all(np.asarray(variance) >= 0)
    assert np.isfinite(float(q.kl_to_prior())) and float(q.kl_to_prior()) > 0


def test_site_gaussian_samples_and_distribution(getkey):
    q, K, m0, mu, Sigma = site_problem("generic")
    samples = np.asarray(q.sample(getkey(), 200_000))
    assert samples.shape == (200_000, 8)
    np.testing.assert_allclose(samples.mean(0), mu, atol=5 * np.sqrt(np.diag(Sigma).max() / 2e5))
    np.testing.assert_allclose(np.cov(samples.T), Sigma, atol=0.01)
    dist = q.to_distribution()
    x = np.asarray(samples[:5])
    np.testing.assert_allclose(
        dist.log_prob(jnp.asarray(x)),
        scipy.stats.multivariate_normal(mu, Sigma).logpdf(x),
        rtol=1e-7,
    )


def dense_problem():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 4))
    Sigma = a @ a.T / 4 + 0.3 * np.eye(4)
    mu = rng.normal(size=4)
    P = np.linalg.inv(Sigma)
    return mu, Sigma, P @ mu, -0.5 * P


def test_dense_family():
    mu, Sigma, eta1, eta2 = dense_problem()
    q = ngvi.DenseGaussianVariational(jnp.asarray(eta1), jnp.asarray(eta2))
    np.testing.assert_allclose(q.mean, mu, rtol=1e-10)
    np.testing.assert_allclose(q.covariance, Sigma, rtol=1e-10)
    np.testing.assert_allclose(q.precision, np.linalg.inv(Sigma), rtol=1e-10)
    mean, variance = q.marginals()
    np.testing.assert_allclose(mean, mu, rtol=1e-10)
    np.testing.assert_allclose(variance, np.diag(Sigma), rtol=1e-10)
    L = np.asarray(q.scale_tril())
    np.testing.assert_allclose(L @ L.T, Sigma, rtol=1e-10)
    np.testing.assert_allclose(L, np.tril(L))
    design = np.random.default_rng(2).normal(size=(7, 4))
    pm, pv = q.projected_marginals(jnp.asarray(design))
    np.testing.assert_allclose(pm, design @ mu, rtol=1e-10)
    np.testing.assert_allclose(pv, np.diag(design @ Sigma @ design.T), rtol=1e-10)
    np.testing.assert_allclose(
        q.entropy(), scipy.stats.multivariate_normal(mu, Sigma).entropy(), rtol=1e-12
    )


def test_dense_with_parameters_symmetrises():
    mu, Sigma, eta1, eta2 = dense_problem()
    skew = np.triu(np.ones((4, 4)), 1) * 1e-3
    q = ngvi.DenseGaussianVariational(jnp.asarray(eta1), jnp.asarray(eta2)).with_parameters(
        (jnp.asarray(eta1), jnp.asarray(eta2 + skew))
    )
    np.testing.assert_array_equal(q.eta2, q.eta2.T)
    np.testing.assert_allclose(q.eta2, eta2 + 0.5 * (skew + skew.T), rtol=1e-14)


def test_diagonal_family():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=5)
    var = rng.uniform(0.1, 2.0, size=5)
    q = ngvi.DiagonalGaussianVariational(jnp.asarray(mu / var), jnp.asarray(-0.5 / var))
    np.testing.assert_allclose(q.mean, mu, rtol=1e-13)
    np.testing.assert_allclose(q.covariance, np.diag(var), rtol=1e-13)
    mean, variance = q.marginals()
    np.testing.assert_allclose(mean, mu, rtol=1e-13)
    np.testing.assert_allclose(variance, var, rtol=1e-13)
    np.testing.assert_allclose(q.scale_tril(), np.diag(np.sqrt(var)), rtol=1e-13)
    design = rng.normal(size=(6, 5))
    pm, pv = q.projected_marginals(jnp.asarray(design))
    np.testing.assert_allclose(pm, design @ mu, rtol=1e-12)
    np.testing.assert_allclose(pv, np.diag(design @ np.diag(var) @ design.T), rtol=1e-12)
    np.testing.assert_allclose(
        q.entropy(), scipy.stats.multivariate_normal(mu, np.diag(var)).entropy(), rtol=1e-12
    )
    new = q.with_parameters((jnp.zeros(5), jnp.full(5, -0.5)))
    assert isinstance(new, ngvi.DiagonalGaussianVariational)
    np.testing.assert_allclose(new.covariance, np.eye(5))


@pytest.mark.parametrize("family", ["dense", "diagonal"])
def test_parametric_samples_and_distribution(family, getkey):
    if family == "dense":
        mu, Sigma, eta1, eta2 = dense_problem()
        q = ngvi.DenseGaussianVariational(jnp.asarray(eta1), jnp.asarray(eta2))
    else:
        mu, var = np.array([0.5, -1.0, 2.0]), np.array([0.3, 1.5, 0.8])
        Sigma = np.diag(var)
        q = ngvi.DiagonalGaussianVariational(jnp.asarray(mu / var), jnp.asarray(-0.5 / var))
    samples = np.asarray(q.sample(getkey(), 200_000))
    np.testing.assert_allclose(samples.mean(0), mu, atol=0.01)
    np.testing.assert_allclose(np.cov(samples.T), Sigma, atol=0.02)
    x = samples[:5]
    np.testing.assert_allclose(
        q.to_distribution().log_prob(jnp.asarray(x)),
        scipy.stats.multivariate_normal(mu, Sigma).logpdf(x),
        rtol=1e-10,
    )


@pytest.mark.parametrize("family", ["dense", "diagonal"])
def test_dense_kl(family):
    rng = np.random.default_rng(4)
    mu, Sigma, eta1, eta2 = dense_problem()
    if family == "diagonal":
        Sigma = np.diag(np.diag(Sigma))
        q = ngvi.DiagonalGaussianVariational(
            jnp.asarray(mu / np.diag(Sigma)), jnp.asarray(-0.5 / np.diag(Sigma))
        )
    else:
        q = ngvi.DenseGaussianVariational(jnp.asarray(eta1), jnp.asarray(eta2))
    a = rng.normal(size=(4, 4))
    S0 = a @ a.T + np.eye(4)
    m0 = rng.normal(size=4)
    got = dense_kl(q, jnp.asarray(m0), jnp.asarray(np.linalg.cholesky(S0)))
    np.testing.assert_allclose(got, numpy_kl(mu, Sigma, m0, S0), rtol=1e-10)


def test_site_family_is_differentiable_in_sites():
    """`kl_to_prior` as a function of the sites has the gradient finite differences give."""
    q, *_ = site_problem("generic")

    def kl(lam1, lam2):
        return q.with_parameters((lam1, lam2)).kl_to_prior()

    g1, g2 = jax.grad(kl, argnums=(0, 1))(q.lam1, q.lam2)
    h = 1e-6
    for i in (0, 3):
        e = jnp.zeros(8).at[i].set(h)
        fd1 = (kl(q.lam1 + e, q.lam2) - kl(q.lam1 - e, q.lam2)) / (2 * h)
        fd2 = (kl(q.lam1, q.lam2 + e) - kl(q.lam1, q.lam2 - e)) / (2 * h)
        np.testing.assert_allclose(g1[i], fd1, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(g2[i], fd2, rtol=1e-5, atol=1e-8)
