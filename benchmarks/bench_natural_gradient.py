"""Benchmark: the dense GP natural-gradient step against one Cholesky of the same size.

For each `N` in `--sizes` (default 500, 1000, 2000, 4000) a GP probit classifier (SE kernel,
variance 1, lengthscale 0.5, float64) is fitted by `ngvi.NaturalGradient(lr=1)` on the first
`N` rows of `banana_large.csv`. Each `N` runs in its own subprocess (clean compile caches and a
clean peak-RSS reading) and reports:

- compile: a cold one-step `ngvi.fit` minus its warm median (tracing + XLA compilation);
- step: median wall time of one compiled `NaturalGradient.step` (the loop body);
- Cholesky: median of one `jax.jit(jnp.linalg.cholesky)` of the `N x N` SPD matrix `I + K`,
  timed interleaved with the step so that both see the same machine load; the ratio is the
  median of the per-repeat ratios;
- steps to 1e-6: the first step count whose ELBO is within 1e-6 nats of the converged ELBO
  (a long `tol=0` run), and the warm wall time of `ngvi.fit` with exactly that many steps;
- memory: XLA's buffer assignment for the compiled step (arguments + outputs + temporaries,
  `memory_analysis()`), in units of one `N x N` float64 array (`8 N^2` bytes), and the growth
  of the process's peak RSS over its size before the model was built.

`python benchmarks/bench_natural_gradient.py` prints the table and rewrites the marked
section of `benchmarks/README.md` (`--no-write` to skip that).
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "data" / "banana_large.csv"
README = HERE / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
TARGET_NATS = 1e-6


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _load(path: Path, n: int):
    import numpy as np

    data = np.loadtxt(path, delimiter=",", skiprows=1)
    if n > data.shape[0]:
        raise ValueError(f"{path} has {data.shape[0]} rows, fewer than N = {n}.")
    return data[:n, :2], data[:n, 2]


def worker(n: int, repeats: int, data_path: Path, max_steps: int) -> dict:
    """Measure one problem size; returns a JSON-able dict."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    import ngvi

    X, y = _load(data_path, n)
    rss_before = _rss_bytes()
    prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=0.5))
    model = ngvi.Model(prior, ngvi.likelihoods.Probit(), X, y)
    optimizer = ngvi.NaturalGradient(lr=1.0)
    nxn = 8.0 * n * n

    # Convergence: a long run with the tolerance off gives the converged ELBO.
    long = ngvi.fit(model, optimizer, num_steps=max_steps, tol=0.0, progress=False)
    elbos = np.asarray(long.history.elbo)
    converged = float(elbos[-1])
    within = np.nonzero(np.abs(elbos - converged) <= TARGET_NATS)[0]
    steps_needed = int(within[0]) + 1
    last_change = float(abs(elbos[-1] - elbos[-2]))

    # Time-to-target and compile time of the user-facing loop. The compile time is a cold
    # one-step fit minus the median warm one-step fit (both also build K and the final ELBO).
    def run_fit(num_steps):
        start = time.perf_counter()
        result = ngvi.fit(model, optimizer, num_steps=num_steps, tol=0.0, progress=False)
        jax.block_until_ready(result.q.parameters)
        return time.perf_counter() - start, result

    cold_one, _ = run_fit(1)
    warm_one = statistics.median(run_fit(1)[0] for _ in range(repeats))
    run_fit(steps_needed)  # compiles the loop for this buffer length
    warm_times = []
    for _ in range(max(1, repeats // 2) if n >= 4000 else repeats):
        seconds, result = run_fit(steps_needed)
        warm_times.append(seconds)
    fit_time = statistics.median(warm_times)
    gap = float(abs(float(result.elbo) - converged))

    # One step, compiled on its own, at the converged posterior.
    q_start = long.q

    arrays, static = eqx.partition((model, optimizer, q_start), eqx.is_array)

    def step_of_arrays(arrays):
        model, optimizer, q = eqx.combine(arrays, static)
        new_q, _, info = optimizer.step(model, q, None, jnp.asarray(0), jax.random.PRNGKey(0))
        return new_q.parameters, info.elbo

    start = time.perf_counter()
    compiled_step = jax.jit(step_of_arrays).lower(arrays).compile()
    step_compile = time.perf_counter() - start
    memory = compiled_step.memory_analysis()
    step_bytes = (
        memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
    )

    def one_step():
        return compiled_step(arrays)

    spd = jnp.eye(n, dtype=jnp.float64) + model.prior.covariance(model.X)
    cholesky = jax.jit(jnp.linalg.cholesky)
    jax.block_until_ready(cholesky(spd))
    jax.block_until_ready(one_step())
    chol_times, step_times, ratios = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(cholesky(spd))
        t_chol = time.perf_counter() - start
        start = time.perf_counter()
        jax.block_until_ready(one_step())
        t_step = time.perf_counter() - start
        chol_times.append(t_chol)
        step_times.append(t_step)
        ratios.append(t_step / t_chol)
    chol = statistics.median(chol_times)

    return {
        "n": n,
        "repeats": repeats,
        "compile_s": cold_one - warm_one,
        "step_compile_s": step_compile,
        "step_s": statistics.median(step_times),
        "cholesky_s": chol,
        "ratio": statistics.median(ratios),
        "steps_to_target": steps_needed,
        "fit_s": fit_time,
        "fit_cholesky_equivalents": fit_time / chol,
        "final_gap_nats": gap,
        "converged_elbo": converged,
        "last_change_nats": last_change,
        "step_memory_nxn": step_bytes / nxn,
        "step_temp_nxn": memory.temp_size_in_bytes / nxn,
        "rss_growth_nxn": (_rss_bytes() - rss_before) / nxn,
    }


def _table(rows: list[dict]) -> str:
    head = (
        "| N | compile (s) | step (s) | Cholesky (s) | step / Cholesky | steps to 1e-6 "
        "| time to 1e-6 (s) | in Choleskys | step memory (N x N arrays) | peak RSS growth "
        "(N x N arrays) |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['n']} | {r['compile_s']:.2f} | {r['step_s']:.4f} | {r['cholesky_s']:.4f} "
        f"| {r['ratio']:.2f} | {r['steps_to_target']} | {r['fit_s']:.3f} "
        f"| {r['fit_cholesky_equivalents']:.1f} | {r['step_memory_nxn']:.2f} "
        f"(temp {r['step_temp_nxn']:.2f}) | {r['rss_growth_nxn']:.1f} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _environment() -> str:
    import jax

    devices = ", ".join(sorted({d.platform for d in jax.devices()}))
    cpu = platform.processor() or platform.machine()
    return (
        f"Generated by `make bench` on {time.strftime('%Y-%m-%d')}: {cpu}, "
        f"{os.cpu_count()} CPU cores, jax {jax.__version__} ({devices}), float64. "
        "Timings are medians of repeated runs on a shared machine; the ratios (timed "
        "interleaved) are the stable figures."
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 4000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--no-write", action="store_true", help="do not rewrite README.md")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.repeats, args.data, args.max_steps)))
        return

    rows = []
    for n in args.sizes:
        command = [
            sys.executable,
            __file__,
            "--worker",
            str(n),
            "--repeats",
            str(args.repeats),
            "--max-steps",
            str(args.max_steps),
            "--data",
            str(args.data),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = _table(rows)
    print(table)
    if not args.no_write:
        text = README.read_text()
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        section = f"{START}\n{_environment()}\n\n{table}{END}"
        README.write_text(before + section + after)
        print(f"wrote {README}")


if __name__ == "__main__":
    main()
