"""The variational families (`ngvi.families`), against dense NumPy formulas with explicit
inverses.

A family holds only its own parameters (with a leading latent axis `C`) and is read with a
model or a view: `SiteGaussianVariational` through a dense GP `Model`, the whitened families
(`DenseGaussianVariational`, `DiagonalGaussianVariational`, `WhitenedGaussianVariational`)
through `RowsView` / `JointView` and through the models that hand those views out.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import numpy_kl

import ngvi
from ngvi.families import JointView, RowsView
from ngvi.likelihoods import Gaussian

VARIANCE, LENGTHSCALE, JITTER, PRIOR_MEAN = 1.3, 0.8, 1e-4, 0.3


def se_kernel(x1, x2, variance=VARIANCE, lengthscale=LENGTHSCALE):
    d = x1[:, None] - x2[None, :]
    return variance * np.exp(-0.5 * d**2 / lengthscale**2)


def gp_model(
    x, family="full", variance=VARIANCE, lengthscale=LENGTHSCALE, jitter=JITTER, mean=PRIOR_MEAN
):
    """A dense GP model on inputs `x` (the targets play no part in these tests)."""
    kernel = ngvi.kernels.SquaredExponential(variance, lengthscale)
    prior = ngvi.GPPrior(kernel, mean=mean, jitter=jitter)
    return ngvi.Model(prior, Gaussian(0.1), x, np.zeros(len(x)), family=family)


def gp_inputs():
    return np.sort(np.random.default_rng(0).uniform(-2, 2, size=8))


def dense_gp_prediction(x, x_new, mu, Sigma):
    """Predictive marginals of f(x_new) when q(f(x)) = N(mu, Sigma), by the dense formulas
    `m0 + k*^T K^-1 (mu - m0)`, `k** - k*^T K^-1 k* + k*^T K^-1 Sigma K^-1 k*` (K with jitter,
    k* and k** without)."""
    Kinv = np.linalg.inv(se_kernel(x, x) + JITTER * np.eye(len(x)))
    cross = se_kernel(x, x_new)
    projection = Kinv @ cross  # K^-1 k*
    mean = PRIOR_MEAN + projection.T @ (mu - PRIOR_MEAN)
    variance = (
        VARIANCE
        - np.sum(cross * projection, axis=0)
        + np.sum(projection * (Sigma @ projection), axis=0)
    )
    return mean, variance


# --------------------------------------------------------------------------------------------
# SiteGaussianVariational through a dense GP model.

SITE_CASES = {
    "generic": np.array([0.5, 2.0, 0.1, 3.0, 1.0, 0.7, 0.2, 4.0]),
    "zeros_and_tiny": np.array([0.0, 2.0, 1e-12, 0.0, 1.0, 1e-12, 0.2, 0.0]),
    "all_zero": np.zeros(8),
    "huge": np.array([1e8, 2.0, 1e6, 0.3, 1.0, 0.7, 1e7, 4.0]),
}


def site_problem(case):
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(-2, 2, size=8))  # == gp_inputs()
    model = gp_model(x)
    K = se_kernel(x, x) + JITTER * np.eye(8)
    m0 = PRIOR_MEAN * np.ones(8)
    W = SITE_CASES[case]
    lam1 = rng.normal(size=8)
    q = ngvi.SiteGaussianVariational(jnp.asarray(lam1)[None], jnp.asarray(-0.5 * W)[None])
    Kinv = np.linalg.inv(K)
    Sigma = np.linalg.inv(Kinv + np.diag(W))
    mu = Sigma @ (Kinv @ m0 + lam1)
    return model, q, K, m0, mu, Sigma


@pytest.mark.parametrize("case", list(SITE_CASES))
def test_site_gaussian_moments(case):
    model, q, K, m0, mu, Sigma = site_problem(case)
    scale = np.abs(mu).max()
    mean, covariance = model.posterior(q)
    assert mean.shape == (1, 8) and covariance.shape == (1, 8, 8)
    np.testing.assert_allclose(mean[0], mu, rtol=1e-7, atol=1e-8 * scale)
    np.testing.assert_allclose(covariance[0], Sigma, rtol=1e-7, atol=1e-9)
    marginals, _ = model.latent_marginals_and_kl(q)
    assert marginals.mean.shape == (8, 1) and marginals.variance.shape == (8, 1)
    np.testing.assert_allclose(marginals.mean[:, 0], mu, rtol=1e-7, atol=1e-8 * scale)
    np.testing.assert_allclose(marginals.variance[:, 0], np.diag(Sigma), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(q.site_precision[0], SITE_CASES[case])
    np.testing.assert_array_equal(q.precision, q.site_precision)
    # one Cholesky of B = I + W^1/2 K W^1/2 carries everything
    factors = q.factorise(model)
    sqrt_w = np.sqrt(SITE_CASES[case])
    B = np.eye(8) + sqrt_w[:, None] * K * sqrt_w[None, :]
    L = np.asarray(factors.cholesky_b[0])
    np.testing.assert_allclose(L, np.tril(L))
    np.testing.assert_allclose(L @ L.T, B, rtol=1e-12, atol=1e-12 * np.abs(B).max())
    np.testing.assert_allclose(factors.mean[0], mu, rtol=1e-7, atol=1e-8 * scale)
    np.testing.assert_allclose(factors.variance[0], np.diag(Sigma), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("case", list(SITE_CASES))
def test_site_gaussian_kl(case):
    model, q, K, m0, mu, Sigma = site_problem(case)
    want_kl = numpy_kl(mu, Sigma, m0, K)
    _, kl = model.latent_marginals_and_kl(q)
    np.testing.assert_allclose(kl, want_kl, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(q.factorise(model).kl[0], want_kl, rtol=1e-7, atol=1e-8)


def test_site_gaussian_zero_site_precision():
    """W = 0: Sigma = K, mu = m0 + K lam1, KL = 1/2 lam1^T K lam1; and zero sites are the prior."""
    model, q, K, m0, mu, Sigma = site_problem("all_zero")
    lam1 = np.asarray(q.lam1[0])
    mean, covariance = model.posterior(q)
    np.testing.assert_allclose(mean[0], m0 + K @ lam1, rtol=1e-13)
    np.testing.assert_allclose(covariance[0], K, rtol=1e-14)
    _, kl = model.latent_marginals_and_kl(q)
    np.testing.assert_allclose(kl, 0.5 * lam1 @ K @ lam1, rtol=1e-12)
    prior = ngvi.SiteGaussianVariational.at_prior(1, 8, jnp.float64)
    assert prior.lam1.shape == (1, 8) and prior.lam1.dtype == jnp.float64
    np.testing.assert_allclose(model.posterior(prior)[0][0], m0, rtol=1e-14)
    np.testing.assert_allclose(model.latent_marginals_and_kl(prior)[1], 0.0, atol=1e-14)


def test_site_gaussian_parameters_roundtrip():
    model, q, *_ = site_problem("generic")
    lam1, lam2 = q.parameters
    np.testing.assert_array_equal(lam1, q.lam1)
    np.testing.assert_array_equal(lam2, q.lam2)
    new = q.with_parameters((2 * lam1, lam2))
    assert isinstance(new, ngvi.SiteGaussianVariational)
    np.testing.assert_array_equal(new.lam1, 2 * lam1)
    np.testing.assert_array_equal(new.lam2, lam2)
    assert bool(q.precision_is_valid())
    np.testing.assert_allclose(q.min_precision(), SITE_CASES["generic"].min(), rtol=1e-15)
    assert not bool(q.with_parameters((lam1, -lam2)).precision_is_valid())  # W < 0
    assert not bool(q.with_parameters((lam1.at[0, 2].set(jnp.nan), lam2)).precision_is_valid())


def test_site_gaussian_several_latents():
    """The leading axis holds one site set per latent function, read under the same prior:
    marginals `(N, C)` column by column, the KL summed."""
    model, q, K, m0, mu, Sigma = site_problem("generic")
    _, q2, _, _, mu2, Sigma2 = site_problem("huge")
    both = ngvi.SiteGaussianVariational(
        jnp.concatenate([q.lam1, q2.lam1]), jnp.concatenate([q.lam2, q2.lam2])
    )
    marginals, kl = model.latent_marginals_and_kl(both)
    assert marginals.mean.shape == (8, 2)
    np.testing.assert_allclose(marginals.mean[:, 0], mu, rtol=1e-7)
    np.testing.assert_allclose(marginals.mean[:, 1], mu2, rtol=1e-7, atol=1e-8 * np.abs(mu2).max())
    np.testing.assert_allclose(marginals.variance[:, 1], np.diag(Sigma2), rtol=1e-7, atol=1e-9)
    want = numpy_kl(mu, Sigma, m0, K) + numpy_kl(mu2, Sigma2, m0, K)
    np.testing.assert_allclose(kl, want, rtol=1e-7)


def test_site_gaussian_predictions():
    model, q, K, m0, mu, Sigma = site_problem("generic")
    x_new = np.array([-2.5, -0.3, 0.0, 1.1, 3.0])
    want_mean, want_variance = dense_gp_prediction(np.asarray(model.X[:, 0]), x_new, mu, Sigma)
    predicted = model.predict_latent(q, x_new[:, None])
    assert predicted.mean.shape == (5, 1) and predicted.variance.shape == (5, 1)
    np.testing.assert_allclose(predicted.mean[:, 0], want_mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(predicted.variance[:, 0], want_variance, rtol=1e-6, atol=1e-9)


def test_site_gaussian_ill_conditioned_kernel_stays_finite():
    """cond(K) ~ 1e10: the B-form never inverts K, so marginals and KL stay finite and the
    variances positive."""
    x = np.linspace(-3, 3, 60)
    K = se_kernel(x, x, variance=1.5, lengthscale=1.0) + 1e-8 * np.eye(60)
    assert np.linalg.cond(K) > 1e9
    model = gp_model(x, variance=1.5, lengthscale=1.0, jitter=1e-8, mean=0.0)
    W = np.full(60, 0.5)
    q = ngvi.SiteGaussianVariational(jnp.asarray(np.sin(x))[None], jnp.asarray(-0.5 * W)[None])
    marginals, kl = model.latent_marginals_and_kl(q)
    assert np.all(np.isfinite(marginals.mean)) and np.all(np.isfinite(marginals.variance))
    assert np.all(np.asarray(marginals.variance) >= 0)
    assert np.isfinite(float(kl)) and float(kl) > 0


def test_site_family_is_differentiable_in_sites():
    """The KL as a function of the sites has the gradient finite differences give."""
    model, q, *_ = site_problem("generic")

    def kl(lam1, lam2):
        return model.latent_marginals_and_kl(q.with_parameters((lam1, lam2)))[1]

    g1, g2 = jax.grad(kl, argnums=(0, 1))(q.lam1, q.lam2)
    h = 1e-6
    for i in (0, 3):
        e = jnp.zeros((1, 8)).at[0, i].set(h)
        fd1 = (kl(q.lam1 + e, q.lam2) - kl(q.lam1 - e, q.lam2)) / (2 * h)
        fd2 = (kl(q.lam1, q.lam2 + e) - kl(q.lam1, q.lam2 - e)) / (2 * h)
        np.testing.assert_allclose(g1[0, i], fd1, rtol=1e-5, atol=1e-8)
        np.testing.assert_allclose(g2[0, i], fd2, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------------------------
# The whitened families, read through views: v ~ q, f_b = o_b + a_b^T v + e_b.


def random_gaussians(num_latent, dim, seed):
    """`num_latent` Gaussians `N(mu_c, Sigma_c)` over `v`."""
    rng = np.random.default_rng(seed)
    mus, Sigmas = [], []
    for _ in range(num_latent):
        a = rng.normal(size=(dim, dim))
        Sigmas.append(a @ a.T / dim + 0.3 * np.eye(dim))
        mus.append(rng.normal(size=dim))
    return np.stack(mus), np.stack(Sigmas)


def family_of(kind, mus, Sigmas, seed=0):
    """The family `kind` holding the Gaussians (a diagonal family keeps only their diagonals;
    the moment family is given a square root with its upper triangle filled with noise, which
    it must ignore, and signs flipped on its diagonal). Returns `q` and the covariances it
    represents."""
    if kind == "dense":
        precisions = np.stack([np.linalg.inv(S) for S in Sigmas])
        eta1 = np.einsum("cij,cj->ci", precisions, mus)
        q = ngvi.DenseGaussianVariational(jnp.asarray(eta1), jnp.asarray(-0.5 * precisions))
        return q, Sigmas
    if kind == "diagonal":
        variances = np.stack([np.diag(S) for S in Sigmas])
        q = ngvi.DiagonalGaussianVariational(
            jnp.asarray(mus / variances), jnp.asarray(-0.5 / variances)
        )
        return q, np.stack([np.diag(v) for v in variances])
    if kind == "moments":
        roots = np.stack([np.linalg.cholesky(S) for S in Sigmas])
        roots = roots * np.where(np.arange(roots.shape[-1]) % 2 == 1, -1.0, 1.0)[None, None, :]
        noise = np.random.default_rng(seed).normal(size=roots.shape)
        scale = roots + np.triu(noise, 1)
        return ngvi.WhitenedGaussianVariational(jnp.asarray(mus), jnp.asarray(scale)), Sigmas
    if kind == "moments-diagonal":
        sd = np.stack([np.sqrt(np.diag(S)) for S in Sigmas])
        sd[:, ::2] *= -1.0  # the sign of a scale entry is irrelevant
        q = ngvi.WhitenedGaussianVariational(jnp.asarray(mus), jnp.asarray(sd))
        return q, np.stack([np.diag(s**2) for s in sd])
    raise ValueError(kind)


WHITENED = ["dense", "diagonal", "moments", "moments-diagonal"]


@pytest.mark.parametrize("kind", WHITENED)
def test_whitened_family_through_a_rows_view(kind):
    mus, Sigmas = random_gaussians(2, 4, seed=1)
    q, Sigmas = family_of(kind, mus, Sigmas)
    rng = np.random.default_rng(2)
    offset, design = rng.normal(size=7), rng.normal(size=(7, 4))
    conditional = rng.uniform(0.0, 0.5, size=7)
    view = RowsView(jnp.asarray(offset), jnp.asarray(design), jnp.asarray(conditional))
    marginals = q.project(view)
    assert marginals.mean.shape == (7, 2) and marginals.variance.shape == (7, 2)
    for c in range(2):
        np.testing.assert_allclose(marginals.mean[:, c], offset + design @ mus[c], rtol=1e-10)
        np.testing.assert_allclose(
            marginals.variance[:, c],
            conditional + np.diag(design @ Sigmas[c] @ design.T),
            rtol=1e-10,
        )
    want_kl = sum(numpy_kl(mus[c], Sigmas[c], np.zeros(4), np.eye(4)) for c in range(2))
    np.testing.assert_allclose(q.kl_to_prior(), want_kl, rtol=1e-10)


@pytest.mark.parametrize("kind", WHITENED)
def test_whitened_family_through_a_joint_view(kind):
    """One point whose latent is the vector `f = o + A v`: full covariance `A Sigma A^T`."""
    mus, Sigmas = random_gaussians(1, 4, seed=3)
    q, Sigmas = family_of(kind, mus, Sigmas)
    rng = np.random.default_rng(4)
    offset, design = rng.normal(size=3), rng.normal(size=(3, 4))
    marginals = q.project(JointView(jnp.asarray(offset), jnp.asarray(design)))
    assert marginals.mean.shape == (1, 3) and marginals.variance.shape == (1, 3, 3)
    np.testing.assert_allclose(marginals.mean[0], offset + design @ mus[0], rtol=1e-10)
    np.testing.assert_allclose(marginals.variance[0], design @ Sigmas[0] @ design.T, rtol=1e-10)


@pytest.mark.parametrize("kind", WHITENED)
def test_whitened_family_through_a_linear_model(kind):
    """Weights `w = m0 + L0 v` with a full prior covariance `S0`: posterior, marginals and the
    KL to `N(m0, S0)` (the old `dense_kl`) in weight space."""
    mus, Sigmas = random_gaussians(1, 4, seed=5)
    q, Sigmas = family_of(kind, mus, Sigmas)
    rng = np.random.default_rng(6)
    a = rng.normal(size=(4, 4))
    S0 = a @ a.T + np.eye(4)
    m0 = rng.normal(size=4)
    X = rng.normal(size=(9, 4))
    model = ngvi.Model(
        ngvi.GaussianPrior(jnp.asarray(m0), jnp.asarray(S0)), Gaussian(0.5), X, rng.normal(size=9)
    )
    L0 = np.linalg.cholesky(S0)
    mu_w, Sigma_w = m0 + L0 @ mus[0], L0 @ Sigmas[0] @ L0.T
    mean, covariance = model.posterior(q)
    np.testing.assert_allclose(mean[0], mu_w, rtol=1e-10)
    np.testing.assert_allclose(covariance[0], Sigma_w, rtol=1e-10, atol=1e-12)
    marginals, kl = model.latent_marginals_and_kl(q)
    np.testing.assert_allclose(marginals.mean[:, 0], X @ mu_w, rtol=1e-10)
    np.testing.assert_allclose(marginals.variance[:, 0], np.diag(X @ Sigma_w @ X.T), rtol=1e-10)
    np.testing.assert_allclose(kl, numpy_kl(mu_w, Sigma_w, m0, S0), rtol=1e-10)
    x_new = rng.normal(size=(2, 4))
    predicted = model.predict_latent(q, jnp.asarray(x_new))
    np.testing.assert_allclose(predicted.mean[:, 0], x_new @ mu_w, rtol=1e-10)
    np.testing.assert_allclose(
        predicted.variance[:, 0], np.diag(x_new @ Sigma_w @ x_new.T), rtol=1e-10
    )


@pytest.mark.parametrize("kind", WHITENED)
def test_whitened_family_through_a_gp_model(kind):
    """A dense GP in whitened coordinates, `f(X) = m0 + chol(K) v`: posterior, marginals, KL to
    `N(m0, K)` and predictions against the dense formulas."""
    x = gp_inputs()
    mus, Sigmas = random_gaussians(1, 8, seed=7)
    q, Sigmas = family_of(kind, mus, Sigmas)
    model = gp_model(x, family="mean-field" if "diagonal" in kind else "full")
    K = se_kernel(x, x) + JITTER * np.eye(8)
    L = np.linalg.cholesky(K)
    mu_f, Sigma_f = PRIOR_MEAN + L @ mus[0], L @ Sigmas[0] @ L.T
    mean, covariance = model.posterior(q)
    np.testing.assert_allclose(mean[0], mu_f, rtol=1e-9)
    np.testing.assert_allclose(covariance[0], Sigma_f, rtol=1e-9, atol=1e-12)
    marginals, kl = model.latent_marginals_and_kl(q)
    np.testing.assert_allclose(marginals.mean[:, 0], mu_f, rtol=1e-9)
    np.testing.assert_allclose(marginals.variance[:, 0], np.diag(Sigma_f), rtol=1e-9)
    np.testing.assert_allclose(kl, numpy_kl(mu_f, Sigma_f, PRIOR_MEAN * np.ones(8), K), rtol=1e-7)
    x_new = np.array([-2.5, -0.3, 0.0, 1.1, 3.0])
    want_mean, want_variance = dense_gp_prediction(x, x_new, mu_f, Sigma_f)
    predicted = model.predict_latent(q, x_new[:, None])
    np.testing.assert_allclose(predicted.mean[:, 0], want_mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(predicted.variance[:, 0], want_variance, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "family, dim",
    [
        (ngvi.DenseGaussianVariational, 3),
        (ngvi.DiagonalGaussianVariational, 3),
        (ngvi.WhitenedGaussianVariational, 3),
    ],
)
def test_at_prior_is_the_standard_normal(family, dim):
    q = family.at_prior(2, dim, jnp.float64)
    view = RowsView(
        jnp.zeros(5), jnp.asarray(np.random.default_rng(8).normal(size=(5, dim))), jnp.zeros(5)
    )
    marginals = q.project(view)
    np.testing.assert_array_equal(marginals.mean, 0.0)
    A = np.asarray(view.design)
    for c in range(2):
        np.testing.assert_allclose(marginals.variance[:, c], np.sum(A**2, axis=1), rtol=1e-14)
    np.testing.assert_allclose(q.kl_to_prior(), 0.0, atol=1e-14)
    assert q.parameters[0].shape == (2, dim)


def test_dense_family_parameters():
    mus, Sigmas = random_gaussians(2, 4, seed=9)
    q, _ = family_of("dense", mus, Sigmas)
    precisions = np.stack([np.linalg.inv(S) for S in Sigmas])
    np.testing.assert_allclose(q.precision, precisions, rtol=1e-12)
    np.testing.assert_allclose(
        q.min_precision(), min(np.diag(P).min() for P in precisions), rtol=1e-12
    )
    assert bool(q.precision_is_valid())
    indefinite = precisions.copy()
    indefinite[1] -= 2 * np.linalg.eigvalsh(precisions[1]).max() * np.eye(4)
    bad = q.with_parameters((q.eta1, jnp.asarray(-0.5 * indefinite)))
    assert not bool(bad.precision_is_valid())


def test_dense_with_parameters_symmetrises():
    mus, Sigmas = random_gaussians(1, 4, seed=10)
    q, _ = family_of("dense", mus, Sigmas)
    eta2 = np.asarray(q.eta2)
    skew = np.triu(np.ones((4, 4)), 1)[None] * 1e-3
    new = q.with_parameters((q.eta1, jnp.asarray(eta2 + skew)))
    np.testing.assert_array_equal(new.eta2, jnp.swapaxes(new.eta2, -1, -2))
    np.testing.assert_allclose(
        new.eta2, eta2 + 0.5 * (skew + np.swapaxes(skew, -1, -2)), rtol=1e-14
    )


def test_diagonal_family_parameters():
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(2, 5))
    var = rng.uniform(0.1, 2.0, size=(2, 5))
    q = ngvi.DiagonalGaussianVariational(jnp.asarray(mu / var), jnp.asarray(-0.5 / var))
    np.testing.assert_allclose(q.precision, 1.0 / var, rtol=1e-13)
    np.testing.assert_allclose(q.min_precision(), (1.0 / var).min(), rtol=1e-13)
    assert bool(q.precision_is_valid())
    new = q.with_parameters((jnp.zeros((2, 5)), jnp.full((2, 5), -0.5)))
    assert isinstance(new, ngvi.DiagonalGaussianVariational)
    np.testing.assert_allclose(new.kl_to_prior(), 0.0, atol=1e-15)
    assert not bool(q.with_parameters((q.eta1, q.eta2.at[1, 2].set(0.1))).precision_is_valid())


def test_moment_family_parameters():
    mus, Sigmas = random_gaussians(2, 3, seed=11)
    q, Sigmas = family_of("moments", mus, Sigmas)
    # the marginal precisions of v: 1 / diag(S S^T), S the lower triangle of `scale`
    np.testing.assert_allclose(
        q.precision, np.stack([1.0 / np.diag(S) for S in Sigmas]), rtol=1e-12
    )
    assert bool(q.precision_is_valid())
    roundtrip = q.with_parameters(q.parameters)
    assert isinstance(roundtrip, ngvi.WhitenedGaussianVariational)
    np.testing.assert_array_equal(roundtrip.scale, q.scale)
    singular = q.with_parameters((q.mean, q.scale.at[0, 1, 1].set(0.0)))
    assert not bool(singular.precision_is_valid())
