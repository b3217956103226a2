"""Benchmark: sparse GPs (`ngvi.SparseModel`) by natural gradients, full batch and minibatch.

Three problems, all float64, probit likelihood, SE kernel, hyperparameters fixed:

- **banana-5300** (`ngvi.datasets.banana_large()`, variance 1, lengthscale 0.5, jitter 1e-6),
  `M` in {16, 64, 256} k-means inducing inputs (`inducing=M`), full batch,
  `NaturalGradient(lr=1.0)`: steps and seconds to within 1e-6 nats of the optimum (a 40-step
  `tol=0` run). Side by side, GPJax 1.0 `fit_natgrads(natgrad_lr=1.0)` with the same kernel,
  jitter and `Z`, `optax.set_to_zero()` for the hyperparameters, in the peer environment
  `benchmarks/.venv-peers` (this script runs itself there as a subprocess and reads JSON back).
  GPJax's final `q(u)` is converted to ngvi's whitened natural parameters and scored by ngvi's
  exact full-data ELBO, so both gaps are to the same optimum. Two GPJax likelihoods: its own
  `Bernoulli` (probit link clipped to [1e-3, 1 - 1e-3], a slightly different model) and the same
  class with the exact probit link (`logits = log Phi(f) - log Phi(-f)`), which optimises the
  same objective as ngvi (both use 20-point Gauss-Hermite).
- **skin** (`ngvi.datasets.skin()`, 245,057 x 3, 80/20 split, standardised with the training
  statistics; variance 1, lengthscale 1), `M = 256`, `B = 1024`, `NaturalGradient()` with its
  default schedule: seconds of `fit`'s compiled loop to the first epoch whose full-data ELBO is
  within 1e-3 x N nats of a full-batch reference (12 steps of lr = 1 warm-started from the
  minibatch posterior after 4 epochs: from the prior, 8 steps still moved it by 60 nats), peak
  memory, held-out accuracy and NLPD.
- **synthetic** 10^6 x 8: `x ~ N(0, I)`, `f` a draw of a GP with an SE kernel (variance 1,
  lengthscale 2) through 2,000 random Fourier features, `y ~ Bernoulli(Phi(f(x)))`, so the
  Bayes-optimal classifier `sign f(x)` is known; `M = 512`, `B = 4096`, one epoch by default
  (`--epochs`): seconds per epoch, peak memory, held-out accuracy against the Bayes-optimal
  accuracy on 10^5 fresh points.

The minibatch timings drive `fit`'s own compiled loop (`ngvi.fitting.fit._start` and
`ngvi.fitting.loop.run_chunk`, see `_Loop`) so that the two full-data ELBO passes `fit` adds
before and after the loop (minutes at 10^6 x 512) are not counted in an epoch; their cost is
reported separately. GPJax runs 30 iterations per configuration; ngvi's compiled full-batch loop
is timed in the same (peer) process right after each GPJax run.

Step cost against its unavoidable flops: one compiled `NaturalGradient.step` is timed
interleaved with a *reference* computation in the same process: the `M x M` Cholesky of
`K_uu + jitter I`, the `B x M` kernel block `K_ub`, `A = L^-1 K_ub`, the marginal variances
`colsum(A * (S A))` for a given `M x M` covariance `S`, the means `A^T m` and the curvature
`A diag(w) A^T` (one Cholesky, one triangular solve, two `M x M x B` products). The ratio
(median of per-repeat ratios) is the figure to read on a shared machine. Cumulative prefixes of
the step (marginals + KL; + expected statistics; + natural target) are timed the same way, and
the compiled step's Cholesky / triangular-solve calls are counted in its optimised HLO.

Peak memory is the worker process's `ru_maxrss` (`resource.getrusage`), the high-water mark of
its resident set including JAX/XLA itself; "growth" is that minus the resident set after the
data were loaded. (tracemalloc does not see XLA's buffers.) Each problem runs in its own
process.

    python benchmarks/bench_sparse.py            # everything; rewrites the marked README section
    python benchmarks/bench_sparse.py --quick    # small sizes, a minute or two, writes nothing
    python benchmarks/bench_sparse.py --parts banana gpjax --no-write
"""

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
PEER_PYTHON = HERE / ".venv-peers" / "bin" / "python"
START, END = "<!-- bench-sparse:start -->", "<!-- bench-sparse:end -->"
TARGET_NATS = 1e-6
SKIN_TARGET_PER_POINT = 1e-3
SKIN_REFERENCE_STEPS = 12
JITTER = 1e-6


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _jax():
    import jax

    jax.config.update("jax_enable_x64", True)
    return jax


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _fit_seconds(model, optimizer, num_steps: int, repeats: int, **options):
    """Median warm wall time of `ngvi.fit` (the loop is compiled once per shape) and a result."""
    import jax

    import ngvi

    results = []

    def run():
        result = ngvi.fit(model, optimizer, num_steps, tol=0.0, progress=False, **options)
        jax.block_until_ready(result.q.parameters)
        results.append(result)

    return _median_time(run, repeats), results[-1]


class _Loop:
    """`ngvi.fit`'s own compiled minibatch loop (`ngvi.fitting.fit._start` and
    `ngvi.fitting.loop.run_chunk`, the functions `fit` calls), driven without the two
    full-data ELBO passes `fit` adds before and after it, so that an epoch on 10^6 rows can be
    timed on its own. `advance(k)` runs up to step `k`; the step counter, the default schedule
    and the epoch permutation carry on across calls exactly as in one `fit`."""

    def __init__(self, model, optimizer, num_steps: int, batch_size: int, key):
        import jax
        import jax.numpy as jnp

        from ngvi.fitting.loop import run_chunk

        fit_module = sys.modules["ngvi.fitting.fit"]
        q, state = optimizer.init(model, model.init_variational(optimizer.form))
        self.loop, self.carry = fit_module._start(
            model, optimizer, q, state, num_steps, key, batch_size, None, None
        )
        self.run_chunk, self.tol = run_chunk, jnp.asarray(0.0, model.dtype)
        start = time.perf_counter()
        jax.block_until_ready(run_chunk(self.loop, self.carry, jnp.asarray(0), self.tol))
        self.compile_s = time.perf_counter() - start
        self.seconds = 0.0

    def advance(self, stop_at: int, strict: bool = True):
        import jax
        import jax.numpy as jnp

        start = time.perf_counter()
        carry = self.run_chunk(self.loop, self.carry, jnp.asarray(stop_at), self.tol)
        jax.block_until_ready(carry.q.parameters)
        self.seconds += time.perf_counter() - start
        if strict and int(carry.step) != stop_at:
            raise RuntimeError(f"the loop stopped at step {int(carry.step)}: {carry.outcome}")
        self.carry = carry
        return carry.q


def _full_elbo(model, q):
    """`fit`'s compiled full-data ELBO (warm after its first call) and its wall time."""
    import jax

    def elbo(model, q):  # fit's pass before and after its loop: (ELBO, MC error, quadrature)
        return sys.modules["ngvi.fitting.fit"]._full_elbo(model, q, None)[0]

    jax.block_until_ready(elbo(model, q))  # compiled (or cached) here
    start = time.perf_counter()
    value = float(jax.block_until_ready(elbo(model, q)))
    return value, time.perf_counter() - start


# --------------------------------------------------------------------------------------------
# The step against its unavoidable flops


def _hlo_counts(text: str) -> dict:
    lower = text.lower()
    return {
        "cholesky": lower.count("potrf") + lower.count("cholesky("),
        "triangular_solve": lower.count("trsm") + lower.count("triangular-solve("),
    }


def step_against_reference(model, optimizer, q, batch_indices, repeats: int) -> dict:
    """Time one compiled `optimizer.step` (and its cumulative prefixes) interleaved with the
    reference computation; `batch_indices=None` is the full-batch step."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.scipy.linalg as jsl

    from ngvi.likelihoods.expectations import expected_statistics

    q, state = optimizer.init(model, q)
    batch = None if batch_indices is None else model.batch(jnp.asarray(batch_indices))
    arrays, static = eqx.partition((model, optimizer, q, state, batch), eqx.is_array)

    def parts(arrays, upto):
        model, optimizer, q, state, batch = eqx.combine(arrays, static)
        if upto == "step":
            new_q, _, info = optimizer.step(model, q, state, batch, jnp.asarray(1), None)
            return new_q.parameters, info.elbo
        marginals, kl = model.latent_marginals_and_kl(q, batch)
        if upto == "marginals":
            return marginals, kl
        stats = expected_statistics(model.likelihood, model.targets(batch), marginals)
        if upto == "statistics":
            return stats, kl
        return model.natural_target(q, batch, marginals, stats, model.batch_scale(batch)), kl

    X_batch = model.data.X if batch is None else batch.X
    kernel, Z = model.prior.kernel, model.inducing
    eye = jnp.eye(Z.shape[0], dtype=Z.dtype)
    covariance = jnp.linalg.inv(-2.0 * q.eta2[0])
    mean = covariance @ q.eta1[0]
    weights = jnp.ones(X_batch.shape[0], Z.dtype)

    def reference(Z, X_batch, mean, covariance, weights):
        factor = jnp.linalg.cholesky(kernel(Z, Z) + JITTER * eye)
        design = jsl.solve_triangular(factor, kernel(Z, X_batch), lower=True)  # A, (M, B)
        variances = jnp.sum(design * (covariance @ design), axis=0)
        means = design.T @ mean
        curvature = design @ (weights[:, None] * design.T)
        return means, variances, curvature, design @ weights

    compiled = {
        name: jax.jit(lambda a, name=name: parts(a, name)).lower(arrays).compile()
        for name in ("marginals", "statistics", "target", "step")
    }
    ref_args = (Z, X_batch, mean, covariance, weights)
    compiled["reference"] = jax.jit(reference).lower(*ref_args).compile()
    calls = {name: (lambda c=c: c(arrays)) for name, c in compiled.items() if name != "reference"}
    calls["reference"] = lambda: compiled["reference"](*ref_args)
    for call in calls.values():
        jax.block_until_ready(call())
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call())
            times[name].append(time.perf_counter() - start)
    ratio = {
        name: statistics.median(t / r for t, r in zip(times[name], times["reference"], strict=True))
        for name in calls
    }
    memory = compiled["step"].memory_analysis()
    flops = {}
    for name in ("step", "reference"):
        try:
            cost = compiled[name].cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            flops[name] = float(cost.get("flops", float("nan")))
        except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
            flops[name] = float("nan")
    return {
        "batch": int(X_batch.shape[0]),
        "step_s": statistics.median(times["step"]),
        "reference_s": statistics.median(times["reference"]),
        "ratio": ratio["step"],
        "prefix_ratios": {k: ratio[k] for k in ("marginals", "statistics", "target")},
        "step_temp_mb": memory.temp_size_in_bytes / 2**20,
        "step_hlo": _hlo_counts(compiled["step"].as_text()),
        "reference_hlo": _hlo_counts(compiled["reference"].as_text()),
        "xla_flops_step_over_reference": flops["step"] / flops["reference"],
    }


# --------------------------------------------------------------------------------------------
# banana-5300: ngvi (main environment)


def _banana_model(num_inducing: int):
    import ngvi

    X, y = ngvi.datasets.banana_large()
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=0.5)
    prior = ngvi.GPPrior(kernel, jitter=JITTER)
    return ngvi.SparseModel(prior, ngvi.likelihoods.Probit(), X, y, inducing=num_inducing), X, y


def banana_worker(num_inducing: int, long_steps: int, repeats: int, targets: list) -> dict:
    import numpy as np

    _jax()
    import ngvi

    model, _, _ = _banana_model(num_inducing)
    optimizer = ngvi.NaturalGradient(lr=1.0)
    cold, _ = _fit_seconds(model, optimizer, 1, 1)
    warm_one, _ = _fit_seconds(model, optimizer, 1, repeats)
    _, long = _fit_seconds(model, optimizer, long_steps, 1)
    elbos = np.append(np.asarray(long.history.elbo), float(long.elbo))  # ELBO after k steps
    optimum = float(elbos.max())
    steps = int(np.nonzero(optimum - elbos <= TARGET_NATS)[0][0])
    seconds, result = _fit_seconds(model, optimizer, steps, repeats)
    reach = []
    for target in targets:  # GPJax's final ELBOs: when is ngvi first within 1e-6 nats of each?
        # The same rule as GPJax's own count (within TARGET_NATS of its final ELBO).
        hit = np.nonzero(elbos >= target - TARGET_NATS)[0]
        if not hit.size:
            reach.append(None)
            continue
        k = int(hit[0])
        reach.append({"steps": k, "seconds": _fit_seconds(model, optimizer, k, repeats)[0]})
    step = step_against_reference(model, optimizer, long.q, None, 2 * repeats + 1)
    return {
        "M": num_inducing,
        "z_checksum": float(np.sum(np.asarray(model.inducing))),
        "optimum": optimum,
        "last_change": float(abs(elbos[-1] - elbos[-2])),
        "steps_to_target": steps,
        "seconds_to_target": seconds,
        "gap_at_target": optimum - float(result.elbo),
        "compile_s": cold - warm_one,
        "gap_after": {str(k): float(optimum - elbos[k]) for k in (5, 10, 15) if k < elbos.size},
        "reach_gpjax": reach,
        "step": step,
        "peak_rss_mb": _rss_bytes() / 2**20,
    }


# --------------------------------------------------------------------------------------------
# banana-5300: GPJax (peer environment)


def gpjax_worker(num_inducing: int, num_iters: int) -> dict:
    import numpy as np

    jax = _jax()
    import equinox as eqx
    import gpjax as gpx
    import jax.numpy as jnp
    import jax.scipy as jsp
    import numpyro.distributions as npd
    import optax
    from gpjax.parameters import val

    class ExactProbit(gpx.likelihoods.Bernoulli):
        """GPJax's Bernoulli with the unclipped probit link, in a stable form."""

        def link_function(self, f):
            log_cdf = jsp.special.log_ndtr
            return npd.Bernoulli(logits=log_cdf(f) - log_cdf(-f))

    model, X, y = _banana_model(num_inducing)
    Z = jnp.asarray(model.inducing)
    data = gpx.Dataset(X=jnp.asarray(X), y=jnp.asarray(y)[:, None])
    kernel = gpx.kernels.RBF(lengthscale=0.5, variance=1.0)
    prior = gpx.gps.Prior(kernel=kernel, mean_function=gpx.mean_functions.Zero(), jitter=JITTER)
    q_start = model.init_variational("natural")

    def to_ngvi(family):
        """GPJax's q(u) as ngvi's natural parameters over v = L^-1 u, L = chol(K_zz + jI)."""
        if isinstance(family, gpx.variational_families.DualVariationalGaussian):
            _, root = family._gram_and_root()
            eta1 = root.T @ val(family.dual_vector)[:, 0]
            precision = jnp.eye(Z.shape[0]) + root.T @ val(family.dual_matrix) @ root
        else:
            mean = val(family.variational_mean)[:, 0]
            root_cov = val(family.variational_root_covariance)
            inverse = jsp.linalg.solve_triangular(root_cov, jnp.eye(Z.shape[0]), lower=True)
            precision = inverse.T @ inverse
            eta1 = precision @ mean
        precision = 0.5 * (precision + precision.T)
        return q_start.with_parameters((eta1[None], -0.5 * precision[None]))

    # ngvi's own compiled full-batch loop in this process, timed right after each GPJax run,
    # so that the two see the same machine load.
    import ngvi

    ngvi_loop = _Loop(model, ngvi.NaturalGradient(lr=1.0), num_iters, None, jax.random.PRNGKey(0))
    ngvi_start = ngvi_loop.carry

    def ngvi_seconds_per_step():
        ngvi_loop.carry, ngvi_loop.seconds = ngvi_start, 0.0
        ngvi_loop.advance(num_iters, strict=False)  # stops early once the ELBO is exact
        return ngvi_loop.seconds / int(ngvi_loop.carry.step)

    rows = []
    likelihoods = {
        "Bernoulli (clipped)": gpx.likelihoods.Bernoulli(),
        "exact probit": ExactProbit(),
    }
    for likelihood_name, likelihood in likelihoods.items():
        posterior = prior * likelihood
        for family_name in ("dual", "whitened"):
            if family_name == "dual":
                family = gpx.variational_families.DualVariationalGaussian(
                    model=posterior, inducing_inputs=Z
                )
                objective = lambda q, d: -gpx.objectives.dual_elbo(q, d)  # noqa: E731
            else:
                family = gpx.variational_families.WhitenedVariationalGaussian(
                    model=posterior, inducing_inputs=Z
                )
                objective = lambda q, d: -gpx.objectives.elbo(q, d)  # noqa: E731
            arrays, static = eqx.partition(family, eqx.is_array)

            def run(arrays, X, y, objective=objective, static=static):
                fitted, history = gpx.fit_natgrads(
                    model=eqx.combine(arrays, static),
                    objective=objective,
                    train_data=gpx.Dataset(X=X, y=y),
                    optim=optax.set_to_zero(),
                    natgrad_lr=1.0,
                    num_iters=num_iters,
                    verbose=False,
                )
                return eqx.filter(fitted, eqx.is_array), history

            start = time.perf_counter()
            compiled = jax.jit(run).lower(arrays, data.X, data.y).compile()
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            fitted_arrays, history = jax.block_until_ready(compiled(arrays, data.X, data.y))
            seconds = time.perf_counter() - start
            ngvi_step = ngvi_seconds_per_step()
            fitted = eqx.combine(fitted_arrays, static)
            history = -np.asarray(history)  # GPJax's own ELBO of q_k, k = 0 .. num_iters - 1
            own_final = float(history[-1])
            plateau = int(np.nonzero(np.abs(history - own_final) <= TARGET_NATS)[0][0])
            elbo = float(model.elbo(to_ngvi(fitted)))
            rows.append(
                {
                    "likelihood": likelihood_name,
                    "family": family_name,
                    "iters": num_iters,
                    "compile_s": compile_s,
                    "seconds": seconds,
                    "seconds_per_iter": seconds / num_iters,
                    "own_final_elbo": own_final,
                    "own_last_change": float(abs(history[-1] - history[-2])),
                    "iters_to_own_final": plateau,
                    "seconds_to_own_final": plateau * seconds / num_iters,
                    "elbo_exact": elbo if math.isfinite(elbo) else None,
                    "ngvi_seconds_per_step": ngvi_step,
                }
            )
    return {
        "M": num_inducing,
        "z_checksum": float(np.sum(np.asarray(Z))),
        "gpjax": gpx.__version__,
        "rows": rows,
    }


# --------------------------------------------------------------------------------------------
# skin


def _binary_scores(prediction, y) -> tuple[float, float]:
    import numpy as np

    p = np.clip(np.asarray(prediction.mean).reshape(-1), 1e-12, 1 - 1e-12)
    accuracy = float(np.mean((p > 0.5) == (y > 0.5)))
    nlpd = float(-np.mean(np.where(y > 0.5, np.log(p), np.log1p(-p))))
    return accuracy, nlpd


def skin_worker(quick: bool, repeats: int) -> dict:
    import numpy as np

    jax = _jax()
    import ngvi

    rss_start = _rss_bytes()
    X, y = ngvi.datasets.skin()
    order = np.random.default_rng(0).permutation(len(y))
    if quick:
        order = order[:20_000]
    cut = int(0.8 * len(order))
    train, test = order[:cut], order[cut:]
    centre, spread = X[train].mean(0), X[train].std(0)
    X = (X - centre) / spread
    M, B = (32, 256) if quick else (256, 1024)
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=1.0)
    prior = ngvi.GPPrior(kernel, jitter=JITTER)
    model = ngvi.SparseModel(prior, ngvi.likelihoods.Probit(), X[train], y[train], inducing=M)
    N = len(train)
    rss_data = _rss_bytes()

    # Minibatches, the default schedule (`NaturalGradient()`), fit's compiled loop, with the
    # full-data ELBO after every epoch (outside the timing).
    per_epoch, first, most = N // B, (2 if quick else 4), (6 if quick else 12)
    loop = _Loop(model, ngvi.NaturalGradient(), most * per_epoch, B, jax.random.PRNGKey(0))
    checkpoints, seconds, posteriors = [], [], []

    def epoch():
        q = loop.advance((len(checkpoints) + 1) * per_epoch)
        checkpoints.append(_full_elbo(model, q)[0])
        seconds.append(loop.seconds)
        posteriors.append(q)

    for _ in range(first):
        epoch()
    # The reference: full-batch steps with lr = 1 from the best minibatch posterior (the
    # fixed point does not depend on the start; from the prior, 8 steps still moved 60 nats).
    start = time.perf_counter()
    reference = ngvi.fit(
        model,
        ngvi.NaturalGradient(lr=1.0),
        SKIN_REFERENCE_STEPS,
        q=posteriors[-1],
        tol=0.0,
        progress=False,
    )
    reference_s = time.perf_counter() - start
    optimum = max(float(reference.elbo), *checkpoints)
    target = optimum - SKIN_TARGET_PER_POINT * N
    while checkpoints[-1] < target and len(checkpoints) < most:
        epoch()
    reached = [k for k, e in enumerate(checkpoints) if e >= target]
    epochs_needed = reached[0] + 1 if reached else None
    q = posteriors[reached[0]] if reached else posteriors[-1]
    elbo_s = _full_elbo(model, q)[1]
    accuracy, nlpd = _binary_scores(ngvi.predict(model, q, X[test]), y[test])
    ref_acc, ref_nlpd = _binary_scores(ngvi.predict(model, reference.q, X[test]), y[test])
    rss_fit = _rss_bytes()
    step = step_against_reference(model, ngvi.NaturalGradient(), q, np.arange(B), repeats)
    return {
        "N": N,
        "M": M,
        "B": B,
        "n_test": len(test),
        "reference_steps": SKIN_REFERENCE_STEPS,
        "reference_elbo": optimum,
        "reference_last_change": float(abs(reference.elbo - reference.history.elbo[-1])),
        "reference_start_gap": float(reference.elbo) - checkpoints[first - 1],
        "reference_seconds": reference_s,
        "checkpoint_gaps_per_point": [(optimum - e) / N for e in checkpoints],
        "epochs_needed": epochs_needed,
        "steps": None if epochs_needed is None else epochs_needed * per_epoch,
        "seconds": None if epochs_needed is None else seconds[epochs_needed - 1],
        "seconds_per_epoch": seconds[-1] / len(seconds),
        "loop_compile_s": loop.compile_s,
        "full_elbo_seconds": elbo_s,
        "gap_per_point": (optimum - checkpoints[reached[0] if reached else -1]) / N,
        "accuracy": accuracy,
        "nlpd": nlpd,
        "reference_accuracy": ref_acc,
        "reference_nlpd": ref_nlpd,
        "data_mb": (X.nbytes + y.nbytes) / 2**20,
        "rss_start_mb": rss_start / 2**20,
        "rss_after_data_mb": rss_data / 2**20,
        "peak_rss_mb": rss_fit / 2**20,
        "growth_mb": (rss_fit - rss_data) / 2**20,
        "step": step,
    }


# --------------------------------------------------------------------------------------------
# synthetic 10^6 x 8


def _rff_problem(num_rows: int, dim: int, lengthscale: float, seed: int, features: int = 2000):
    """A GP draw `f` through random Fourier features, `y ~ Bernoulli(Phi(f))`."""
    import numpy as np
    from scipy.special import ndtr

    rng = np.random.default_rng(seed)
    omega = rng.normal(size=(dim, features)) / lengthscale
    phase = rng.uniform(0, 2 * np.pi, size=features)
    weights = rng.normal(size=features) * np.sqrt(2.0 / features)

    def latent(X):
        out = np.empty(X.shape[0])
        for start in range(0, X.shape[0], 5000):
            rows = X[start : start + 5000]
            out[start : start + 5000] = np.cos(rows @ omega + phase) @ weights
        return out

    def draw(n, rng):
        X = rng.normal(size=(n, dim))
        f = latent(X)
        return X, f, (rng.uniform(size=n) < ndtr(f)).astype(float)

    return draw(num_rows, rng), draw(100_000 if num_rows >= 100_000 else num_rows // 4, rng)


def synthetic_worker(num_rows: int, quick: bool, epochs: int, repeats: int) -> dict:
    import numpy as np
    from scipy.special import ndtr

    jax = _jax()
    import ngvi

    dim, lengthscale = 8, 2.0
    M, B = (64, 512) if quick else (512, 4096)
    rss_start = _rss_bytes()
    (X, f, y), (X_test, f_test, y_test) = _rff_problem(num_rows, dim, lengthscale, seed=1)
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=lengthscale)
    start = time.perf_counter()
    prior = ngvi.GPPrior(kernel, jitter=JITTER)
    model = ngvi.SparseModel(prior, ngvi.likelihoods.Probit(), X, y, inducing=M)
    kmeans_s = time.perf_counter() - start
    rss_data = _rss_bytes()
    per_epoch = num_rows // B
    loop = _Loop(model, ngvi.NaturalGradient(), epochs * per_epoch, B, jax.random.PRNGKey(0))
    q = loop.advance(epochs * per_epoch)
    rss_fit = _rss_bytes()
    start = time.perf_counter()
    prediction = ngvi.predict(model, q, X_test)
    predict_s = time.perf_counter() - start
    accuracy, nlpd = _binary_scores(prediction, y_test)
    bayes_empirical = float(np.mean((f_test > 0) == (y_test > 0.5)))
    bayes_expected = float(np.mean(ndtr(np.abs(f_test))))
    p = np.clip(ndtr(f_test), 1e-12, 1 - 1e-12)
    bayes_nlpd = float(-np.mean(np.where(y_test > 0.5, np.log(p), np.log1p(-p))))
    step = step_against_reference(model, ngvi.NaturalGradient(), q, np.arange(B), repeats)
    return {
        "N": num_rows,
        "d": dim,
        "M": M,
        "B": B,
        "epochs": epochs,
        "steps": epochs * per_epoch,
        "n_test": len(y_test),
        "seconds_per_epoch": loop.seconds / epochs,
        "loop_compile_s": loop.compile_s,
        "steps_times_step_seconds": per_epoch * step["step_s"],
        "kmeans_seconds": kmeans_s,
        "predict_seconds": predict_s,
        "accuracy": accuracy,
        "nlpd": nlpd,
        "bayes_accuracy": bayes_empirical,
        "bayes_expected_accuracy": bayes_expected,
        "bayes_nlpd": bayes_nlpd,
        "data_mb": (X.nbytes + y.nbytes) / 2**20,
        "rss_start_mb": rss_start / 2**20,
        "rss_after_data_mb": rss_data / 2**20,
        "peak_rss_mb": rss_fit / 2**20,
        "growth_mb": (rss_fit - rss_data) / 2**20,
        "step": step,
    }


# --------------------------------------------------------------------------------------------
# driver


def _run_worker(python, args: list, label: str) -> dict:
    command = [str(python), __file__, *map(str, args)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{label} failed:\n{done.stderr[-4000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"# {label}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(json.dumps(row), flush=True)
    return row


def ensure_peers() -> Path:
    if not PEER_PYTHON.exists():
        raise SystemExit(
            f"{PEER_PYTHON} is missing: `make bench-sparse` creates it "
            "(python -m venv benchmarks/.venv-peers; pip install gpjax==1.0.0 -e .)."
        )
    return PEER_PYTHON


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _tables(banana: list, gpjax: list, skin: dict | None, synthetic: dict | None) -> str:
    out = []
    if banana:
        out.append(
            "**banana-5300, full batch, ngvi** (`NaturalGradient(lr=1.0)`; seconds are warm "
            "`ngvi.fit` wall times, including its two full-data ELBO passes):\n"
        )
        out.append(
            "| M | steps to 1e-6 | seconds to 1e-6 | gap after 5 / 10 steps (nats) "
            "| compile (s) | step (s) | step / reference |\n|---|---|---|---|---|---|---|"
        )
        for b in banana:
            gaps = b["gap_after"]
            out.append(
                f"| {b['M']} | {b['steps_to_target']} | {b['seconds_to_target']:.3f} "
                f"| {gaps.get('5', float('nan')):.1e} / {gaps.get('10', float('nan')):.1e} "
                f"| {b['compile_s']:.1f} | {b['step']['step_s']:.4f} | {b['step']['ratio']:.2f} |"
            )
        out.append("")
    if banana and gpjax:
        out.append(
            "**banana-5300, GPJax 1.0 `fit_natgrads(natgrad_lr=1.0)`**, same kernel, jitter and "
            "`Z`, hyperparameters fixed (`optax.set_to_zero()`), the whole call under `jax.jit` "
            "(compile excluded). *Gap*: ngvi's optimum minus ngvi's exact ELBO of GPJax's final "
            "`q(u)`. *ngvi s / step*: ngvi's compiled full-batch loop (what `fit` runs), timed in "
            "the GPJax process right after each GPJax run. *To its final ELBO*: the first "
            "iteration whose own objective is within 1e-6 of its last. *ngvi to that ELBO*: the "
            "first ngvi step whose exact ELBO is within 1e-6 of that of GPJax's final `q` (the "
            "rule GPJax's own count uses). Speed "
            "ratio = GPJax seconds / ngvi seconds to that ELBO (> 1: ngvi faster), from the two "
            "compiled loops (same process) and from ngvi's user-facing `fit` (other process, "
            "including its two full-data ELBO passes).\n"
        )
        out.append(
            "| M | family | likelihood | gap (nats) | GPJax s / iter | ngvi s / step "
            "| GPJax iters (s) to its final ELBO | ngvi steps (s) to that ELBO "
            "| ngvi `fit` (s) | speed ratio (loops; `fit`) |\n"
            "|---|---|---|---|---|---|---|---|---|---|"
        )
        for b, g in zip(banana, gpjax, strict=True):
            for row, reach in zip(g["rows"], b["reach_gpjax"], strict=True):
                gap = None if row["elbo_exact"] is None else b["optimum"] - row["elbo_exact"]
                per_step = row["ngvi_seconds_per_step"]
                theirs = row["seconds_to_own_final"]
                cells = "| - | - | - |"
                if reach is not None:
                    loop = reach["steps"] * per_step
                    loop_ratio = theirs / loop if loop > 0 else None
                    cells = (
                        f"| {reach['steps']} ({loop:.3f}) | {reach['seconds']:.3f} "
                        f"| {_fmt(loop_ratio)}x; {_fmt(theirs / reach['seconds'])}x |"
                    )
                out.append(
                    f"| {b['M']} | {row['family']} | {row['likelihood']} | {_fmt(gap, '.1e')} "
                    f"| {row['seconds_per_iter']:.4f} | {per_step:.4f} "
                    f"| {row['iters_to_own_final']} ({theirs:.3f}) " + cells
                )
        out.append("")
    if skin:
        s = skin
        out.append(
            f"**skin** (N = {s['N']:,} training pixels, {s['n_test']:,} held out, M = {s['M']}, "
            f"B = {s['B']}, `NaturalGradient()` with its default schedule). *Seconds*: `fit`'s "
            "compiled loop to the first epoch whose full-data ELBO is within "
            f"{SKIN_TARGET_PER_POINT:g} x N of the reference (compile and the full-data ELBO "
            "passes excluded: `ngvi.fit` adds one pass before and one after, "
            f"{s['full_elbo_seconds']:.1f} s each here). Reference: {s['reference_steps']} "
            "full-batch steps with lr = 1 started from the minibatch posterior after the first "
            f"epochs (they raised it by {s['reference_start_gap']:.1f} nats; last change "
            f"{s['reference_last_change']:.1e} nats; {s['reference_seconds']:.0f} s).\n"
        )
        out.append(
            "| fit | epochs (steps) | seconds | gap / N per epoch | held-out accuracy | NLPD "
            "| peak RSS (MB) | growth after data (MB) |\n|---|---|---|---|---|---|---|---|"
        )
        gaps = ", ".join(f"{g:.1e}" for g in s["checkpoint_gaps_per_point"])
        out.append(
            f"| minibatch, B = {s['B']} | {_fmt(s['epochs_needed'], 'd')} "
            f"({_fmt(s['steps'], 'd')}) | {_fmt(s['seconds'], '.1f')} | {gaps} "
            f"| {s['accuracy']:.4f} | {s['nlpd']:.4f} | {s['peak_rss_mb']:.0f} "
            f"| {s['growth_mb']:.0f} |"
        )
        out.append(
            f"| full-batch reference | - ({s['reference_steps']}) | {s['reference_seconds']:.0f} "
            f"| 0 | {s['reference_accuracy']:.4f} | {s['reference_nlpd']:.4f} | | |"
        )
        out.append("")
    if synthetic:
        s = synthetic
        out.append(
            f"**synthetic** (N = {s['N']:,} x {s['d']}, M = {s['M']}, B = {s['B']}, "
            f"{s['epochs']} epoch(s) = {s['steps']} steps of `NaturalGradient()` with its "
            f"default schedule, {s['n_test']:,} fresh held-out points). *s / epoch*: `fit`'s "
            "compiled loop (compile and `fit`'s two full-data ELBO passes excluded); "
            "*steps x step*: the epoch's steps times the compiled step alone.\n"
        )
        out.append(
            "| s / epoch | steps x step (s) | held-out accuracy | Bayes-optimal accuracy "
            "| NLPD (Bayes) | data (MB) | RSS after data (MB) | peak RSS (MB) |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        out.append(
            f"| {s['seconds_per_epoch']:.1f} | {s['steps_times_step_seconds']:.1f} "
            f"| {s['accuracy']:.4f} | {s['bayes_accuracy']:.4f} "
            f"(expected {s['bayes_expected_accuracy']:.4f}) | {s['nlpd']:.4f} "
            f"({s['bayes_nlpd']:.4f}) | {s['data_mb']:.0f} | {s['rss_after_data_mb']:.0f} "
            f"| {s['peak_rss_mb']:.0f} |"
        )
        out.append("")
    steps = [("banana M = " + str(b["M"]), b["step"]) for b in banana]
    if skin:
        steps.append(("skin", skin["step"]))
    if synthetic:
        steps.append(("synthetic", synthetic["step"]))
    if steps:
        out.append(
            "**One step against its unavoidable flops** (medians of interleaved per-repeat "
            "ratios; prefixes are cumulative):\n"
        )
        out.append(
            "| problem | B | step (s) | reference (s) | step / reference | marginals + KL "
            "| + statistics | + target | XLA flops ratio | Cholesky / trsm calls (step; "
            "reference) | step temp (MB) |\n|---|---|---|---|---|---|---|---|---|---|---|"
        )
        for name, s in steps:
            p = s["prefix_ratios"]
            out.append(
                f"| {name} | {s['batch']} | {s['step_s']:.4f} | {s['reference_s']:.4f} "
                f"| {s['ratio']:.2f} | {p['marginals']:.2f} | {p['statistics']:.2f} "
                f"| {p['target']:.2f} | {s['xla_flops_step_over_reference']:.2f} "
                f"| {s['step_hlo']['cholesky']} / {s['step_hlo']['triangular_solve']}; "
                f"{s['reference_hlo']['cholesky']} / {s['reference_hlo']['triangular_solve']} "
                f"| {s['step_temp_mb']:.1f} |"
            )
        out.append("")
    return "\n".join(out)


def _environment() -> str:
    import jax

    devices = ", ".join(sorted({d.platform for d in jax.devices()}))
    cpu = platform.processor() or platform.machine()
    return (
        f"Generated by `make bench-sparse` on {time.strftime('%Y-%m-%d')}: {cpu}, "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__} ({devices}), float64. The machine "
        "was shared with other jobs: absolute times move by factors of 2 or more between runs; "
        "the ratios (timed interleaved) are the stable figures."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes; writes nothing")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["banana", "gpjax", "skin", "synthetic"],
        choices=["banana", "gpjax", "skin", "synthetic"],
    )
    parser.add_argument("--inducing", type=int, nargs="+", default=None)
    parser.add_argument("--rows", type=int, default=None, help="synthetic rows (default 10^6)")
    parser.add_argument("--epochs", type=int, default=1, help="synthetic epochs")
    parser.add_argument("--gpjax-iters", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not rewrite README.md")
    parser.add_argument("--json", type=Path, default=None, help="also save the raw rows here")
    parser.add_argument(
        "--reuse", type=Path, default=None, help="take the parts not run from this --json file"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--targets", type=float, nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = args.inducing or ([16, 64] if args.quick else [16, 64, 256])
    gpjax_iters = args.gpjax_iters or 30
    long_steps = 30 if args.quick else 40

    if args.worker is not None:
        kind, _, value = args.worker.partition(":")
        if kind == "banana":
            row = banana_worker(int(value), long_steps, args.repeats, args.targets)
        elif kind == "gpjax":
            row = gpjax_worker(int(value), gpjax_iters)
        elif kind == "skin":
            row = skin_worker(args.quick, args.repeats)
        else:
            row = synthetic_worker(int(value), args.quick, args.epochs, args.repeats)
        print(json.dumps(row))
        return

    common = ["--repeats", args.repeats, "--gpjax-iters", gpjax_iters]
    common += ["--quick"] if args.quick else []
    banana, gpjax, skin, synthetic = [], [], None, None
    for M in sizes:
        g = None
        if "gpjax" in args.parts:
            g = _run_worker(ensure_peers(), ["--worker", f"gpjax:{M}", *common], f"GPJax M={M}")
            gpjax.append(g)
        if "banana" in args.parts:
            targets = [] if g is None else [r["elbo_exact"] or math.inf for r in g["rows"]]
            b = _run_worker(
                sys.executable,
                ["--worker", f"banana:{M}", *common, "--targets", *targets],
                f"ngvi banana M={M}",
            )
            if g is not None and abs(b["z_checksum"] - g["z_checksum"]) > 1e-9:
                raise RuntimeError("ngvi and GPJax did not get the same inducing inputs.")
            banana.append(b)
    if "skin" in args.parts:
        skin = _run_worker(sys.executable, ["--worker", "skin", *common], "skin")
    if "synthetic" in args.parts:
        rows = args.rows or (50_000 if args.quick else 10**6)
        synthetic = _run_worker(
            sys.executable,
            ["--worker", f"synthetic:{rows}", *common, "--epochs", args.epochs],
            f"synthetic N={rows}",
        )
    if args.reuse is not None:
        saved = json.loads(args.reuse.read_text())
        if "banana" not in args.parts:
            banana = saved["banana"]
        if "gpjax" not in args.parts:
            gpjax = saved["gpjax"]
        skin = skin if "skin" in args.parts else saved["skin"]
        synthetic = synthetic if "synthetic" in args.parts else saved["synthetic"]
    if args.json is not None:
        args.json.write_text(
            json.dumps({"banana": banana, "gpjax": gpjax, "skin": skin, "synthetic": synthetic})
        )
    _jax()
    tables = _tables(banana, gpjax, skin, synthetic)
    print(tables)
    if not (args.no_write or args.quick):
        text = README.read_text()
        if START not in text:
            raise SystemExit(f"{README} has no {START} ... {END} section to rewrite.")
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        README.write_text(before + f"{START}\n{_environment()}\n\n{tables}{END}" + after)
        print(f"wrote {README}")


if __name__ == "__main__":
    main()
