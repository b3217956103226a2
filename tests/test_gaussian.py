"""The Gaussian primitives in `ngvi.gaussian`, against NumPy/SciPy with explicit inverses."""

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest
import scipy.stats
from helpers import numpy_kl

import ngvi


def random_spd(rng, dim, scale=1.0):
    a = rng.normal(size=(dim, dim))
    return scale * (a @ a.T / dim + 0.5 * np.eye(dim))


def random_indefinite(rng, dim):
    a = rng.normal(size=(dim, dim))
    sym = 0.5 * (a + a.T)
    assert np.linalg.eigvalsh(sym).min() < 0
    return sym


def test_natural_to_moments_matches_numpy():
    rng = np.random.default_rng(0)
    precision = random_spd(rng, 5)
    eta1 = rng.normal(size=5)
    eta2 = -0.5 * precision
    mean, covariance = ngvi.natural_to_moments(jnp.asarray(eta1), jnp.asarray(eta2))
    want_cov = np.linalg.inv(precision)
    np.testing.assert_allclose(covariance, want_cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mean, want_cov @ eta1, rtol=1e-10, atol=1e-12)


def test_moments_to_natural_matches_numpy_and_round_trips():
    rng = np.random.default_rng(1)
    covariance = random_spd(rng, 6)
    mean = rng.normal(size=6)
    eta1, eta2 = ngvi.moments_to_natural(jnp.asarray(mean), jnp.asarray(covariance))
    precision = np.linalg.inv(covariance)
    np.testing.assert_allclose(eta1, precision @ mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(eta2, -0.5 * precision, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(eta2, eta2.T)
    back_mean, back_cov = ngvi.natural_to_moments(eta1, eta2)
    np.testing.assert_allclose(back_mean, mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(back_cov, covariance, rtol=1e-10, atol=1e-12)


def test_likelihood_site_vector_and_matrix():
    rng = np.random.default_rng(2)
    mean, grad = rng.normal(size=4), rng.normal(size=4)
    hess_diag = -rng.uniform(0.1, 2.0, size=4)
    lam1, lam2 = ngvi.likelihood_site(jnp.asarray(mean), jnp.asarray(grad), jnp.asarray(hess_diag))
    np.testing.assert_allclose(lam1, grad - hess_diag * mean, rtol=1e-14)
    np.testing.assert_allclose(lam2, 0.5 * hess_diag, rtol=1e-14)
    hess = -random_spd(rng, 4)
    lam1, lam2 = ngvi.likelihood_site(jnp.asarray(mean), jnp.asarray(grad), jnp.asarray(hess))
    np.testing.assert_allclose(lam1, grad - hess @ mean, rtol=1e-12)
    np.testing.assert_allclose(lam2, 0.5 * hess, rtol=1e-14)


def test_damped_natural_update():
    rng = np.random.default_rng(3)
    eta = (jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=(3, 3))))
    target = (jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=(3, 3))))
    full = ngvi.damped_natural_update(eta, target, 1.0)
    for got, want in zip(full, target, strict=True):
        np.testing.assert_array_equal(got, want)
    none = ngvi.damped_natural_update(eta, target, 0.0)
    for got, want in zip(none, eta, strict=True):
        np.testing.assert_array_equal(got, want)
    part = ngvi.damped_natural_update(eta, target, 0.3)
    for got, old, new in zip(part, eta, target, strict=True):
        np.testing.assert_allclose(got, 0.7 * np.asarray(old) + 0.3 * np.asarray(new), rtol=1e-14)


@pytest.mark.parametrize("lr", [1.0, 0.4, 0.05])
def test_blr_full_update_is_the_natural_gradient_step(lr):
    """blr_full_update in (mean, precision) == damped_natural_update in (eta1, eta2) toward
    eta_prior + likelihood_site, converted with explicit NumPy inverses."""
    rng = np.random.default_rng(4)
    dim = 4
    precision = random_spd(rng, dim)
    mean = rng.normal(size=dim)
    prior_precision = random_spd(rng, dim, 0.5)
    prior_mean = rng.normal(size=dim)
    expected_grad = rng.normal(size=dim)
    expected_hess = -random_spd(rng, dim)

    new_mean, new_precision = ngvi.blr_full_update(
        *map(jnp.asarray, (mean, precision, expected_grad, expected_hess, prior_mean)),
        jnp.asarray(prior_precision),
        lr,
    )

    eta = (precision @ mean, -0.5 * precision)
    site1 = expected_grad - expected_hess @ mean
    site2 = 0.5 * expected_hess
    target = (prior_precision @ prior_mean + site1, -0.5 * prior_precision + site2)
    eta1 = (1 - lr) * eta[0] + lr * target[0]
    eta2 = (1 - lr) * eta[1] + lr * target[1]
    want_precision = -2 * eta2
    want_mean = np.linalg.inv(want_precision) @ eta1
    np.testing.assert_allclose(new_precision, want_precision, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new_mean, want_mean, rtol=1e-9, atol=1e-10)


def test_blr_diag_update_by_hand():
    rng = np.random.default_rng(5)
    dim, lr = 5, 0.3
    precision = rng.uniform(0.5, 3.0, size=dim)
    mean = rng.normal(size=dim)
    prior_precision = random_spd(rng, dim)
    prior_mean = rng.normal(size=dim)
    expected_grad = rng.normal(size=dim)
    expected_hess = -rng.uniform(0.1, 2.0, size=dim)
    new_mean, new_precision = ngvi.blr_diag_update(
        *map(jnp.asarray, (mean, precision, expected_grad, expected_hess, prior_mean)),
        jnp.asarray(prior_precision),
        lr,
    )
    g_bar = expected_grad - prior_precision @ (mean - prior_mean)
    h_bar = expected_hess - np.diag(prior_precision)
    want_precision = (1 - lr) * precision - lr * h_bar
    np.testing.assert_allclose(new_precision, want_precision, rtol=1e-13)
    np.testing.assert_allclose(new_mean, mean + lr * g_bar / want_precision, rtol=1e-12)


def test_blr_diag_update_lr1_is_mean_field_fixed_point_for_gaussian():
    """For a Gaussian log joint with diagonal Lambda_0 and a diagonal likelihood Hessian, the
    mean-field optimum is exact; iterating blr_diag_update with lr=1 reaches it."""
    rng = np.random.default_rng(6)
    dim = 3
    prior_precision = np.diag(rng.uniform(0.5, 2.0, size=dim))
    prior_mean = rng.normal(size=dim)
    a = rng.uniform(0.5, 2.0, size=dim)  # log lik = -1/2 sum a_i (w_i - c_i)^2
    c = rng.normal(size=dim)
    mean, precision = jnp.zeros(dim), jnp.ones(dim)
    mean, precision = ngvi.blr_diag_update(
        mean,
        precision,
        jnp.asarray(-a * (np.asarray(mean) - c)),
        jnp.asarray(-a),
        jnp.asarray(prior_mean),
        jnp.asarray(prior_precision),
        1.0,
    )
    total = np.diag(prior_precision) + a
    np.testing.assert_allclose(precision, total, rtol=1e-13)
    want_mean = (np.diag(prior_precision) * prior_mean + a * c) / total
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12)


def test_newton_update_solves_a_quadratic_in_one_step():
    rng = np.random.default_rng(7)
    dim = 5
    A = random_spd(rng, dim)  # log joint = -1/2 (w - w*)^T A (w - w*)
    w_star = rng.normal(size=dim)
    mean = rng.normal(size=dim)
    precision = random_spd(rng, dim)
    grad = -A @ (mean - w_star)
    new_mean, new_precision = ngvi.newton_update(
        jnp.asarray(mean), jnp.asarray(precision), jnp.asarray(grad), jnp.asarray(-A), 1.0
    )
    np.testing.assert_allclose(new_mean, w_star, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(new_precision, A, rtol=1e-13)
    # damped: Lambda_new = (1 - lr) Lambda + lr A, mean moves by lr Lambda_new^-1 g
    lr = 0.25
    new_mean, new_precision = ngvi.newton_update(
        jnp.asarray(mean), jnp.asarray(precision), jnp.asarray(grad), jnp.asarray(-A), lr
    )
    want_precision = (1 - lr) * precision + lr * A
    np.testing.assert_allclose(new_precision, want_precision, rtol=1e-13)
    np.testing.assert_allclose(
        new_mean, mean + lr * np.linalg.solve(want_precision, grad), rtol=1e-10
    )


def test_riemannian_psd_correction_matches_formula():
    rng = np.random.default_rng(8)
    S = random_spd(rng, 4)
    target = random_indefinite(rng, 4)
    lr = 0.7
    got = ngvi.riemannian_psd_correction(jnp.asarray(S), jnp.asarray(target), lr)
    G = S - target
    want = S - lr * G + 0.5 * lr**2 * G @ np.linalg.inv(S) @ G
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(got, got.T)
    # fixed point at S = S_target; first order it is the plain step S - lr G
    same = ngvi.riemannian_psd_correction(jnp.asarray(S), jnp.asarray(S), lr)
    np.testing.assert_allclose(same, S, rtol=1e-14)
    small = 1e-6
    step = ngvi.riemannian_psd_correction(jnp.asarray(S), jnp.asarray(target), small)
    np.testing.assert_allclose((np.asarray(step) - S) / small, -G, rtol=1e-4, atol=1e-4)


def test_riemannian_psd_correction_diagonal_matches_dense():
    rng = np.random.default_rng(9)
    s = rng.uniform(0.1, 3.0, size=6)
    target = rng.normal(size=6) * 3
    for lr in (0.1, 1.0, 3.0):
        diag = ngvi.riemannian_psd_correction(jnp.asarray(s), jnp.asarray(target), lr)
        dense = ngvi.riemannian_psd_correction(
            jnp.asarray(np.diag(s)), jnp.asarray(np.diag(target)), lr
        )
        np.testing.assert_allclose(diag, np.diag(dense), rtol=1e-12)
        g = s - target
        np.testing.assert_allclose(diag, ((s - lr * g) ** 2 + s**2) / (2 * s), rtol=1e-12)
        assert np.all(np.asarray(diag) > 0)


@hypothesis.settings(deadline=None, max_examples=40)
@hypothesis.given(
    seed=st.integers(0, 2**31 - 1),
    lr=st.floats(1e-3, 5.0),
    dim=st.integers(1, 6),
)
def test_riemannian_psd_correction_stays_pd(seed, lr, dim):
    rng = np.random.default_rng(seed)
    S = random_spd(rng, dim)
    a = rng.normal(size=(dim, dim)) * 5
    target = 0.5 * (a + a.T)  # usually indefinite
    new = np.asarray(ngvi.riemannian_psd_correction(jnp.asarray(S), jnp.asarray(target), lr))
    # S_new = 1/2 (S - lr G) S^-1 (S - lr G) + 1/2 S, so its smallest eigenvalue is at least
    # half of S's.
    assert np.linalg.eigvalsh(new).min() >= 0.5 * np.linalg.eigvalsh(S).min() * (1 - 1e-8)


@pytest.mark.parametrize("shape", [(7, 3), (2, 5)])
@pytest.mark.parametrize("weighted", [False, True])
def test_gauss_newton_precision(shape, weighted):
    rng = np.random.default_rng(10)
    J = rng.normal(size=shape)
    R = rng.uniform(0.2, 2.0, size=shape[0]) if weighted else None
    op = ngvi.gauss_newton_precision(jnp.asarray(J), None if R is None else jnp.asarray(R))
    Rinv = np.eye(shape[0]) if R is None else np.diag(1 / R)
    want = J.T @ Rinv @ J
    np.testing.assert_allclose(op.as_matrix(), want, rtol=1e-12, atol=1e-12)
    v = rng.normal(size=shape[1])
    np.testing.assert_allclose(op.mv(jnp.asarray(v)), want @ v, rtol=1e-12, atol=1e-12)
    assert lx.is_symmetric(op)
    assert lx.is_positive_semidefinite(op)
    if shape[0] < shape[1]:  # wide: low-rank form, never a dense D x D matrix
        assert not isinstance(op, lx.MatrixLinearOperator)
        assert isinstance(op, lx.TaggedLinearOperator)
        assert isinstance(op.operator, lx.ComposedLinearOperator)
        leaves = jax.tree_util.tree_leaves(op)
        assert all(np.shape(leaf) != (shape[1], shape[1]) for leaf in leaves)
    else:
        assert isinstance(op, lx.MatrixLinearOperator)


def test_gaussian_entropy_vs_scipy():
    rng = np.random.default_rng(11)
    cov = random_spd(rng, 5)
    L = np.linalg.cholesky(cov)
    got = ngvi.gaussian_entropy(jnp.asarray(L))
    np.testing.assert_allclose(got, scipy.stats.multivariate_normal(np.zeros(5), cov).entropy())


def test_gaussian_kl_vs_numpy():
    rng = np.random.default_rng(12)
    S, S0 = random_spd(rng, 4), random_spd(rng, 4, 2.0)
    m, m0 = rng.normal(size=4), rng.normal(size=4)
    got = ngvi.gaussian_kl(
        jnp.asarray(m),
        jnp.asarray(np.linalg.cholesky(S)),
        jnp.asarray(m0),
        jnp.asarray(np.linalg.cholesky(S0)),
    )
    np.testing.assert_allclose(got, numpy_kl(m, S, m0, S0), rtol=1e-11)
    assert float(got) > 0
    same = ngvi.gaussian_kl(
        jnp.asarray(m),
        jnp.asarray(np.linalg.cholesky(S)),
        jnp.asarray(m),
        jnp.asarray(np.linalg.cholesky(S)),
    )
    np.testing.assert_allclose(same, 0.0, atol=1e-12)


def test_variational_elbo_gaussian_is_log_marginal_at_posterior():
    rng = np.random.default_rng(13)
    n, s2 = 6, 0.3
    K = random_spd(rng, n)
    y = rng.normal(size=n)
    Sigma = np.linalg.inv(np.linalg.inv(K) + np.eye(n) / s2)
    mu = Sigma @ y / s2
    kl = numpy_kl(mu, Sigma, np.zeros(n), K)
    got = ngvi.variational_elbo_gaussian(
        jnp.asarray(y), jnp.asarray(mu), jnp.asarray(np.diag(Sigma)), s2, jnp.asarray(kl)
    )
    want = scipy.stats.multivariate_normal(np.zeros(n), K + s2 * np.eye(n)).logpdf(y)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # and a q that is not the posterior has a strictly lower ELBO
    worse = ngvi.variational_elbo_gaussian(
        jnp.asarray(y),
        jnp.asarray(mu + 0.1),
        jnp.asarray(np.diag(Sigma)),
        s2,
        jnp.asarray(numpy_kl(mu + 0.1, Sigma, np.zeros(n), K)),
    )
    assert float(worse) < want - 1e-3


def test_variational_elbo_mc_approaches_exact(getkey):
    """Linear-Gaussian model `y = X w + e`: MC ELBO within MC error of the closed form."""
    rng = np.random.default_rng(14)
    n, dim, s2 = 10, 3, 2.0
    X = 0.5 * rng.normal(size=(n, dim))
    y = rng.normal(size=n)
    mean = rng.normal(size=dim)
    cov = random_spd(rng, dim, 0.3)
    L = np.linalg.cholesky(cov)
    kl = numpy_kl(mean, cov, np.zeros(dim), np.eye(dim))

    def log_lik(w):
        return jnp.sum(-0.5 * jnp.log(2 * jnp.pi * s2) - (y - X @ w) ** 2 / (2 * s2))

    exact = ngvi.variational_elbo_gaussian(
        jnp.asarray(y),
        jnp.asarray(X @ mean),
        jnp.asarray(np.einsum("nd,de,ne->n", X, cov, X)),
        s2,
        jnp.asarray(kl),
    )
    num_samples = 50_000
    key = getkey()
    mc = ngvi.variational_elbo_mc(
        log_lik, jnp.asarray(mean), jnp.asarray(L), jnp.asarray(kl), key, num_samples
    )
    # standard error from the same samples
    eps = jax.random.normal(key, (num_samples, dim), dtype=jnp.float64)
    values = jax.vmap(log_lik)(jnp.asarray(mean)[None, :] + eps @ jnp.asarray(L).T)
    se = float(jnp.std(values)) / np.sqrt(num_samples)
    assert abs(float(mc) - float(exact)) < 5 * se
    assert se < 0.02  # the check above is not vacuous
    # a small sample is noisy but also close; deterministic given the key
    a = ngvi.variational_elbo_mc(log_lik, jnp.asarray(mean), jnp.asarray(L), kl, key, 8)
    b = ngvi.variational_elbo_mc(log_lik, jnp.asarray(mean), jnp.asarray(L), kl, key, 8)
    assert float(a) == float(b)


def test_variational_elbo_mc_gradient_matches_exact(getkey):
    """Reparameterised MC gradients in the mean average to the exact gradient."""
    rng = np.random.default_rng(15)
    dim, s2 = 2, 0.7
    X = rng.normal(size=(5, dim))
    y = rng.normal(size=5)
    L = np.linalg.cholesky(random_spd(rng, dim, 0.3))

    def log_lik(w):
        return jnp.sum(-0.5 * jnp.log(2 * jnp.pi * s2) - (y - X @ w) ** 2 / (2 * s2))

    def mc(mean):
        return ngvi.variational_elbo_mc(log_lik, mean, jnp.asarray(L), 0.0, getkey_fixed, 20_000)

    getkey_fixed = getkey()
    mean = jnp.asarray(rng.normal(size=dim))
    got = jax.grad(mc)(mean)
    want = X.T @ (y - X @ np.asarray(mean)) / s2  # d/dmu of E[log lik] (exact, linear model)
    np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05)
