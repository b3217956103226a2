"""Throughput of the sharded sparse fit at 1, 2 and 4 emulated CPU devices.

Each device count runs in its own process (`--xla_force_host_platform_device_count` must be
set before JAX starts). Emulated devices share the machine's cores, so the table measures the
overhead of sharding (shard_map, the all-reduce, assembling a batch), not a speed-up.

    python benchmarks/bench_scale_out.py            # N = 131072, M = 256, B = 4096
    python benchmarks/bench_scale_out.py --quick
"""

import argparse
import json
import os
import subprocess
import sys

WORKER = """
import os, sys, json, time
devices, dtype, N, M, B, steps = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
import jax, numpy as np
jax.config.update("jax_enable_x64", dtype == "float64")
from jax.sharding import NamedSharding, PartitionSpec as P
import ngvi
rng = np.random.default_rng(0)
X = rng.normal(size=(N, 3))
y = (np.sin(2 * X[:, 0]) * np.cos(X[:, 1]) + 0.3 * rng.normal(size=N) > 0).astype(float)
mesh = jax.make_mesh((jax.device_count(),), ("data",))
rows = NamedSharding(mesh, P("data"))
if jax.device_count() > 1:
    X, y = jax.device_put(X, rows), jax.device_put(y, rows)
kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=1.0)
model = ngvi.SparseModel(ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X, y,
                         inducing=np.asarray(rng.normal(size=(M, 3))))
options = dict(batch_size=B, progress=False, tol=0.0, key=jax.random.PRNGKey(0))


def seconds(num_steps):
    start = time.perf_counter()
    r = ngvi.fit(model, ngvi.NaturalGradient(), num_steps, **options)
    r.q.parameters[0].block_until_ready()
    return time.perf_counter() - start, r


seconds(steps), seconds(0)  # compile both
# A fit of 0 steps pays the same fixed costs (the full-data ELBO at start and end), so the
# difference is the steps alone; the best of three repeats.
per_step = min((seconds(steps)[0] - seconds(0)[0]) / steps for _ in range(3))
r = seconds(steps)[1]
print("RESULT" + json.dumps({"steps_per_second": 1 / per_step, "elbo": float(r.elbo)}))
"""


def run(devices: int, dtype: str, N: int, M: int, B: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    args = [str(a) for a in (devices, dtype, N, M, B, steps)]
    done = subprocess.run(
        [sys.executable, "-c", WORKER, *args], capture_output=True, text=True, env=env
    )
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    N, M, B, steps = (16384, 64, 1024, 60) if args.quick else (131072, 256, 4096, 100)
    print(
        f"N = {N}, M = {M}, B = {B}, {steps} minibatch natural-gradient steps; CPU cores: "
        f"{os.cpu_count()}"
    )
    print("| dtype | devices | steps / s | relative to 1 device | final ELBO / N |")
    print("|---|---|---|---|---|")
    for dtype in ("float64", "float32"):
        base = None
        for devices in (1, 2, 4):
            result = run(devices, dtype, N, M, B, steps)
            base = base or result["steps_per_second"]
            print(
                f"| {dtype} | {devices} | {result['steps_per_second']:.1f} | "
                f"{result['steps_per_second'] / base:.2f} | {result['elbo'] / N:.5f} |"
            )


if __name__ == "__main__":
    main()
