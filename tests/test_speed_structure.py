"""Structural facts behind the GP natural-gradient step's speed (no wall times asserted).

- a whole `fit` traces the step once, and a second fit of the same shapes not at all;
- the step's jaxpr has exactly one Cholesky, no `N x N` inverse (no triangular solve with `N`
  right-hand sides, no general `N x N` solve) and no `N x N x k` array;
- the variance route it uses (the triangular inverse of `chol(B)`) agrees with numpy
  inverses, including sites with `W_i = 0`, `1e-12`, `1e-300` and very large `W_i`;
- float32 fits stay finite.
"""

import logging
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tutorial_model

import ngvi
from ngvi._linalg import INVERSE_LEAF as _INVERSE_LEAF, lower_inverse as _lower_inverse

BANANA_LARGE = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "banana_large.csv"

_TRACES = []


class _CountingNaturalGradient(ngvi.NaturalGradient):
    def step(self, model, q, state, batch, step_count, key):
        _TRACES.append(1)  # runs at trace time only
        return super().step(model, q, state, batch, step_count, key)


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


def test_fit_compiles_its_elbo_passes_once(caplog):
    """The full-data passes before and after the loop (ELBO, its error, the quadrature check)
    are one compiled program: a second one cost 0.2-0.4 s on every new problem shape."""
    model = _banana_model(37)  # a shape no other test compiles
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=3, progress=False)
    compiled = [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert sum("_elbo_report" in message for message in compiled) == 1, compiled


def test_a_fit_on_a_new_shape_compiles_only_its_three_programs(caplog):
    """The prior check, the full-data ELBO report and the loop: no eager `jnp` operation
    (`jnp.zeros`, `jnp.asarray`, `PRNGKey`, slicing the history, comparing outcomes), each of
    which compiled a small XLA program on a new shape or a fresh process (~0.2 s in all)."""
    dense = _banana_model(41)  # shapes no other test compiles
    prior, likelihood = ngvi.GPPrior(ngvi.kernels.SquaredExponential()), ngvi.likelihoods.Probit()
    sparse = ngvi.SparseModel(prior, likelihood, dense.X, dense.data.y, inducing=dense.X[:13])
    models = {"dense": dense, "sparse": sparse}
    for name, model in models.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
            ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=3, progress=False)
        compiled = [
            r.getMessage().split("jit(", 1)[1].split(")", 1)[0]
            for r in caplog.records
            if r.getMessage().startswith("Compiling jit(")
        ]
        assert sorted(compiled) == ["_elbo_report", "prior_factor_is_finite", "run_chunk"], (
            name,
            compiled,
        )


def _three_programs_fit(num_points: int, family: str):
    """A fit on a size no other test compiles, for each starting point a family makes."""
    data = np.loadtxt(BANANA_LARGE, delimiter=",", skiprows=1)[:num_points]
    prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=0.5))
    X, labels = data[:, :2], (data[:, 2] > 0).astype(int)
    if family == "adam":
        model = ngvi.Model(prior, ngvi.likelihoods.Probit(), X, data[:, 2])
        return lambda: ngvi.fit(model, ngvi.Adam(lr=1e-2), num_steps=3, progress=False)
    if family == "mean-field":
        model = ngvi.SparseModel(
            prior, ngvi.likelihoods.Probit(), X, data[:, 2], inducing=X[:11], family=family
        )
    else:  # coupled sites: one C x C site per point
        likelihood = ngvi.likelihoods.Softmax(num_classes=2)
        model = ngvi.Model(prior, likelihood, X, labels, family="coupled")
    return lambda: ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=3, progress=False)


@pytest.mark.parametrize(
    ("num_points", "family"), [(47, "adam"), (49, "mean-field"), (53, "coupled")]
)
def test_a_fit_on_a_new_shape_makes_its_start_without_eager_programs(caplog, num_points, family):
    """Reproducer: the starting points of `Adam` (`m = 0`, `S = I`), of the mean-field
    family and of coupled sites were made with `jnp.zeros`, `jnp.eye`, `jnp.full` and
    `jnp.broadcast_to`: small programs compiled on each new size (six for `Adam`). Left:
    optax's own initial state, outside the library (its zero moments by `jnp.zeros_like`, a
    `broadcast_in_dim` per size, and its step count)."""
    run = _three_programs_fit(num_points, family)
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        run()
    compiled = [
        r.getMessage().split("jit(", 1)[1].split(")", 1)[0]
        for r in caplog.records
        if r.getMessage().startswith("Compiling jit(")
    ]
    optax = {"broadcast_in_dim", "convert_element_type"} if family == "adam" else set()
    ours = sorted(name for name in compiled if name not in optax)
    assert ours == ["_elbo_report", "prior_factor_is_finite", "run_chunk"], compiled


def test_a_learning_fit_compiles_its_loop_once(caplog):
    """Reproducer: a kernel made from Python floats holds weakly typed arrays; the loop
    returned them strongly typed after its first chunk, so every later chunk compiled the loop
    again (four times in a 60-step fit that learned the hyperparameters, ~3 s each)."""
    dense = _banana_model(43)  # shapes no other test compiles
    learn = ngvi.LearnHyperparameters()
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        # progress=True runs the loop in chunks of 1, 5, 21, ... steps
        result = ngvi.fit(dense, ngvi.NaturalGradient(), 60, learn=learn, tol=0.0, progress=True)
    assert result.num_steps == 60
    compiled = [r.getMessage() for r in caplog.records]
    loops = [m for m in compiled if m.startswith("Compiling jit(run_chunk")]
    reports = [m for m in compiled if m.startswith("Compiling jit(_elbo_report")]
    assert (len(loops), len(reports)) == (1, 1)


@pytest.mark.parametrize("strategy", [ngvi.NaturalGradient, ngvi.Adam])
def test_fits_that_differ_in_the_step_size_share_one_compiled_loop(caplog, strategy):
    """Reproducer: a float `lr` was part of what the loop was compiled for, so comparing
    step sizes on one model compiled the loop once per step size."""
    dense = _banana_model(39)  # shapes no other test compiles
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        for lr in (0.25, 0.5, 1.0):
            ngvi.fit(dense, strategy(lr=lr), num_steps=3, tol=0.0, progress=False)
    loops = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(run_chunk")]
    assert len(loops) == 1


def test_model_methods_compile_as_one_program_each(caplog):
    """Reproducer: `model.elbo(q)`, `model.posterior(q)` and `model.predict_latent` ran
    eagerly, compiling each of their dozens of operations on its own: 5-6 s on the first call
    for a 200-point dense GP, against ~1 s compiled as one program."""
    model = _banana_model(37)  # shapes no other test compiles
    q, X_new = model.init_variational(), np.asarray(model.X)[:5]
    calls = {
        "elbo": lambda: model.elbo(q),
        "posterior": lambda: model.posterior(q),
        "predict_latent": lambda: model.predict_latent(q, X_new),
    }
    for name, call in calls.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
            jax.block_until_ready(call())
        compiled = [
            r.getMessage().split("jit(", 1)[1].split(")", 1)[0]
            for r in caplog.records
            if r.getMessage().startswith("Compiling jit(")
        ]
        assert compiled == [name], compiled


def _all_equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    yield from _all_equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    yield from _all_equations(sub)


def _step_equations(model, optimizer):
    """Every equation (sub-jaxprs included) of one full-batch step from `optimizer.init`'s
    state; the model is an argument, so its kernel matrix is computed inside the jaxpr."""
    q, state = optimizer.init(model, model.init_variational(optimizer.form))

    def step(model, q, state):
        return optimizer.step(model, q, state, None, jnp.asarray(0), jax.random.PRNGKey(0))

    closed = eqx.filter_make_jaxpr(step)(model, q, state)[0]
    return list(_all_equations(closed.jaxpr))


def test_step_has_one_cholesky_and_no_n_by_n_inverse_or_n_by_n_by_k_array():
    n = 2 * _INVERSE_LEAF + 44  # large enough to exercise the blocked inverse
    model = _banana_model(n)
    equations = _step_equations(model, ngvi.NaturalGradient(lr=1.0))
    names = [eqn.primitive.name for eqn in equations]
    assert names.count("cholesky") == 1
    assert "lu" not in names  # no general solve or inverse (jnp.linalg.inv / solve)
    shapes = [var.aval.shape for eqn in equations for var in eqn.outvars]
    assert any(shape[-2:] == (n, n) for shape in shapes)  # the check can see N x N arrays
    # The family holds only its sites, so the step evaluates K(X, X) itself; the kernel's
    # pairwise differences are N x N x d (d = 2 inputs), which is O(N^2 d), not an N x N x k
    # array that grows with N or a batch. Nothing else of that size may appear.
    d = model.X.shape[1]
    big = [shape for shape in shapes if len(shape) >= 3 and int(np.prod(shape)) > n * n]
    assert all(shape == (n, n, d) for shape in big), big
    # no triangular solve with N right-hand sides (the old N^3 route to the variances, or an
    # explicit inverse of chol(B) or chol(K))
    solves = [eqn for eqn in equations if eqn.primitive.name == "triangular_solve"]
    assert solves  # the blocked inverse's leaves are triangular solves
    for eqn in solves:
        assert eqn.invars[1].aval.shape[-1] <= _INVERSE_LEAF


def test_the_em_loop_factorises_twice_per_iteration():
    """`fit_hyperparameters`' compiled loop holds two Cholesky factorisations: the natural
    step's and the hyperparameter gradient's. The line search reads its minoriser off the
    re-solve's first step, the budget's last `q` is evaluated by one more step, and the KL
    comes with the gradient: before, three more ELBOs made the loop 1.8x as many equations
    and its XLA compile ~25% longer."""
    from ngvi.fitting.em import _solve

    model = _banana_model(40)
    strategy = ngvi.NaturalGradient(lr=1.0)
    learned, rest = ngvi.LearnHyperparameters().partition(model)
    q = model.init_variational(strategy.form)
    settings = [jnp.asarray(100), jnp.asarray(20)] + [jnp.asarray(1e-5)] * 4

    def solve(learned, q):
        return _solve(learned, rest, q, strategy, None, 10, *settings)

    closed = eqx.filter_make_jaxpr(solve)(learned, q)[0]
    names = [eqn.primitive.name for eqn in _all_equations(closed.jaxpr)]
    assert names.count("cholesky") == 2


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


def _gp_model(X, lengthscale, jitter, mean=0.0):
    """A GP model whose prior covariance is `_se_kernel(X, lengthscale, jitter)`."""
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=lengthscale)
    prior = ngvi.GPPrior(kernel, mean=mean, jitter=jitter)
    y = (np.arange(X.shape[0]) % 2).astype(float)
    return ngvi.Model(prior, ngvi.likelihoods.Probit(), X, y)


@pytest.mark.parametrize("case", list(_site_cases(3, np.random.default_rng(0))))
def test_factorise_variances_match_numpy_inverses(case):
    n = 2 * _INVERSE_LEAF + 17
    rng = np.random.default_rng(7)
    X = rng.uniform(-2.0, 2.0, size=(n, 2))
    K = _se_kernel(X, lengthscale=0.3, jitter=0.05)  # well conditioned: numpy truth is exact
    model = _gp_model(X, lengthscale=0.3, jitter=0.05, mean=0.3)
    W = _site_cases(n, rng)[case]
    lam1 = rng.normal(size=n)
    q = ngvi.SiteGaussianVariational(jnp.asarray(lam1)[None], jnp.asarray(-W / 2)[None])
    factors = q.factorise(model)
    assert factors.variance.shape == (1, n) and factors.kl.shape == (1,)
    # truth: Sigma = (K^-1 + W)^-1, mu = Sigma (K^-1 m0 + lam1), by plain numpy inverses
    K_inv = np.linalg.inv(K)
    Sigma = np.linalg.inv(K_inv + np.diag(W))
    mu = Sigma @ (K_inv @ np.full(n, 0.3) + lam1)
    np.testing.assert_allclose(factors.variance[0], np.diag(Sigma), rtol=1e-9)
    np.testing.assert_allclose(factors.mean[0], mu, rtol=1e-9, atol=1e-9)
    d = mu - 0.3
    _, logdet_k = np.linalg.slogdet(K)
    _, logdet_s = np.linalg.slogdet(Sigma)
    kl = 0.5 * (np.trace(K_inv @ Sigma) + d @ K_inv @ d - n + logdet_k - logdet_s)
    np.testing.assert_allclose(factors.kl[0], kl, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_zero_sites_keep_the_blocked_inverse_clear_of_subnormals(dtype):
    # Subnormal numbers make CPU arithmetic ~100x slower. Off-diagonal entries of L between
    # sites with W = 0 scale with the W floor; the blocked inverse multiplies up to three
    # of them, and those products must stay normal numbers.
    n = 2 * _INVERSE_LEAF + 3
    X = np.random.default_rng(3).uniform(-1.0, 1.0, size=(n, 1))
    with jax.enable_x64(dtype == jnp.float64):
        model = _gp_model(X, lengthscale=1.0, jitter=1e-3)
        q = model.init_variational()  # zero sites: W = 0 everywhere
        factors = q.factorise(model)
    assert factors.cholesky_b.dtype == dtype
    off_diagonal = np.abs(np.asarray(factors.cholesky_b)[0][np.tril_indices(n, -1)])
    tiny = np.finfo(np.dtype(dtype)).tiny
    assert np.min(off_diagonal) > 0
    assert float(np.min(off_diagonal)) ** 3 >= tiny
    # and W = 0 everywhere is the prior: Sigma = K, whose diagonal is 1 + jitter
    np.testing.assert_allclose(factors.variance[0], np.full(n, 1.0 + 1e-3), rtol=1e-6)


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_float32_fits_stay_finite():
    with jax.enable_x64(False):
        # 1000 banana points at lengthscale 0.5 need float32-sized jitter (1e-6 is below
        # float32 rounding of K, and `fit` refuses that K as not positive definite)
        for model in (tutorial_model(), _banana_model(1000, jitter=1e-4)):
            assert model.y.dtype == jnp.float32
            result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=15, progress=False)
            assert result.q.parameters[0].dtype == jnp.float32
            factors = result.q.factorise(result.model)
            for array in (*result.q.parameters, factors.mean, factors.variance, result.elbo):
                assert np.all(np.isfinite(np.asarray(array)))
            assert np.all(np.asarray(factors.variance) > 0)
