"""Structural facts behind the GP natural-gradient step's speed (no wall times asserted).

- a whole `fit` traces the step once, and a second fit of the same shapes not at all;
- the step's jaxpr has exactly one Cholesky and no `N x N x k` array;
- the variance route it uses (the triangular inverse of `chol(B)`) agrees with numpy
  inverses, including sites with `W_i = 0`, `1e-12`, `1e-300` and very large `W_i`;
- float32 fits stay finite.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tutorial_model

import ngvi
from ngvi.variational import _INVERSE_LEAF, _lower_inverse

BANANA_LARGE = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "banana_large.csv"

_TRACES = []


class _CountingNaturalGradient(ngvi.NaturalGradient):
    def step(self, model, q, state, step_count, key):
        _TRACES.append(1)  # runs at trace time only
        return super().step(model, q, state, step_count, key)


def _banana_model(n, jitter=1e-6):
    data = np.loadtxt(BANANA_LARGE, delimiter=",", skiprows=1)[:n]
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=0.5)
    prior = ngvi.GPPrior(kernel, jitter=jitter)
    return ngvi.Model(prior, ngvi.likelihoods.Probit(), data[:, :2], data[:, 2])


def _se_kernel(X, lengthscale, jitter):
    sq = np.sum((X[:, None, :] - X[None, :, :]) ** 2, axis=-1)
    return np.exp(-0.5 * sq / lengthscale**2) + jitter * np.eye(X.shape[0])


def test_fit_traces_the_step_once():
    _TRACES.clear()
    model = _banana_model(60)
    optimizer = _CountingNaturalGradient(lr=1.0)
    # progress=True runs the loop in many chunks; the chunk boundary must not retrace
    result = ngvi.fit(model, optimizer, num_steps=20, tol=0.0, progress=True)
    assert result.num_steps == 20
    assert len(_TRACES) == 1
    other = ngvi.Model(model.prior, model.likelihood, np.asarray(model.X) + 0.1, model.y)
    ngvi.fit(other, optimizer, num_steps=20, tol=0.0, progress=True)
    assert len(_TRACES) == 1


def _all_equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _all_equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _all_equations(sub)


def test_step_has_one_cholesky_and_no_n_by_n_by_k_array():
    n = 2 * _INVERSE_LEAF + 44  # large enough to exercise the blocked inverse
    model = _banana_model(n)
    q = model.init_variational()
    optimizer = ngvi.NaturalGradient(lr=1.0)
    closed = jax.make_jaxpr(
        lambda q: optimizer.step(model, q, None, jnp.asarray(0), jax.random.PRNGKey(0))
    )(q)
    equations = list(_all_equations(closed.jaxpr))
    names = [eqn.primitive.name for eqn in equations]
    assert names.count("cholesky") == 1
    shapes = [var.aval.shape for eqn in equations for var in eqn.outvars]
    assert any(shape == (n, n) for shape in shapes)  # the check can see N x N arrays
    big = [shape for shape in shapes if len(shape) >= 3 and int(np.prod(shape)) > n * n]
    assert not big, big
    # no triangular solve with N right-hand sides (the old N^3 route to the variances)
    for eqn in equations:
        if eqn.primitive.name == "triangular_solve":
            assert eqn.invars[1].aval.shape[-1] <= _INVERSE_LEAF


@pytest.mark.parametrize("n", [1, 5, _INVERSE_LEAF, _INVERSE_LEAF + 1, 301])
def test_lower_inverse_matches_numpy(n):
    rng = np.random.default_rng(n)
    A = rng.normal(size=(n, n))
    factor = np.linalg.cholesky(A @ A.T / n + np.eye(n))
    np.testing.assert_allclose(
        _lower_inverse(jnp.asarray(factor)), np.linalg.inv(factor), rtol=1e-10, atol=1e-12
    )


def _site_cases(n, rng):
    mixed = rng.uniform(0.0, 2.0, n)
    return {
        "zeros-mixed": np.where(rng.uniform(size=n) < 0.5, 0.0, mixed),
        "tiny": np.where(rng.uniform(size=n) < 0.5, 1e-12, mixed),
        "underflow-level": np.where(rng.uniform(size=n) < 0.5, 1e-300, mixed),
        "wide": 10.0 ** rng.uniform(-12, 4, n),
        "large": 10.0 ** rng.uniform(2, 6, n),
        "all-zero": np.zeros(n),
    }


@pytest.mark.parametrize("case", list(_site_cases(3, np.random.default_rng(0))))
def test_factorise_variances_match_numpy_inverses(case):
    n = 2 * _INVERSE_LEAF + 17
    rng = np.random.default_rng(7)
    X = rng.uniform(-2.0, 2.0, size=(n, 2))
    K = _se_kernel(X, lengthscale=0.3, jitter=0.05)  # well conditioned: numpy truth is exact
    W = _site_cases(n, rng)[case]
    lam1 = rng.normal(size=n)
    q = ngvi.SiteGaussianVariational(jnp.full(n, 0.3), jnp.asarray(K), jnp.asarray(lam1), -W / 2)
    factors = q.factorise()
    # truth: Sigma = (K^-1 + W)^-1, mu = Sigma (K^-1 m0 + lam1), by plain numpy inverses
    K_inv = np.linalg.inv(K)
    Sigma = np.linalg.inv(K_inv + np.diag(W))
    mu = Sigma @ (K_inv @ np.full(n, 0.3) + lam1)
    np.testing.assert_allclose(factors.variance, np.diag(Sigma), rtol=1e-9)
    np.testing.assert_allclose(factors.mean, mu, rtol=1e-9, atol=1e-9)
    d = mu - 0.3
    _, logdet_k = np.linalg.slogdet(K)
    _, logdet_s = np.linalg.slogdet(Sigma)
    kl = 0.5 * (np.trace(K_inv @ Sigma) + d @ K_inv @ d - n + logdet_k - logdet_s)
    np.testing.assert_allclose(factors.kl, kl, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_zero_sites_keep_the_blocked_inverse_clear_of_subnormals(dtype):
    # Subnormal numbers make CPU arithmetic ~100x slower. Off-diagonal entries of L between
    # sites with W = 0 scale with the W floor; the blocked inverse multiplies up to three
    # of them, and those products must stay normal numbers.
    n = 2 * _INVERSE_LEAF + 3
    X = np.random.default_rng(3).uniform(-1.0, 1.0, size=(n, 1))
    K = jnp.asarray(_se_kernel(X, lengthscale=1.0, jitter=1e-3), dtype)
    q = ngvi.SiteGaussianVariational(
        jnp.zeros(n, dtype), K, jnp.zeros(n, dtype), jnp.zeros(n, dtype)
    )
    factors = q.factorise()
    off_diagonal = np.abs(np.asarray(factors.cholesky_b)[np.tril_indices(n, -1)])
    tiny = np.finfo(np.dtype(dtype)).tiny
    assert np.min(off_diagonal) > 0
    assert float(np.min(off_diagonal)) ** 3 >= tiny
    # and W = 0 everywhere is the prior: Sigma = K
    np.testing.assert_allclose(factors.variance, np.diag(np.asarray(K)), rtol=1e-6)


def test_float32_fits_stay_finite():
    with jax.enable_x64(False):
        # 1000 banana points at lengthscale 0.5 need float32-sized jitter (1e-6 is below
        # float32 rounding of K, and `Model` rejects that K as not positive definite)
        for model in (tutorial_model(), _banana_model(1000, jitter=1e-4)):
            assert model.y.dtype == jnp.float32
            result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=15, progress=False)
            assert result.q.parameters[0].dtype == jnp.float32
            factors = result.q.factorise()
            for array in (*result.q.parameters, factors.mean, factors.variance, result.elbo):
                assert np.all(np.isfinite(np.asarray(array)))
            assert np.all(np.asarray(factors.variance) > 0)
