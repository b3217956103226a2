"""An XLA CPU setting ngvi needs, applied before JAX starts its backend.

jaxlib's CPU runtime (0.10 here) can deadlock when its concurrency-optimised scheduler runs
batched linear algebra (vmapped Cholesky factors and triangular solves, as ngvi does for several
latent functions) beside other parallel work on few cores: every worker thread parks and the
program waits forever with no CPU use (reproduced with a two-latent dense GP of 300 points on
two cores; see also PyAutoFit issue #1530). The default scheduler does not deadlock, so ngvi
adds `--xla_cpu_enable_concurrency_optimized_scheduler=false` to `XLA_FLAGS` unless the user
set that flag, or set `NGVI_KEEP_XLA_FLAGS=1`. It only takes effect if JAX's backend has not
started yet (import ngvi before running JAX computations).

The flag is not the whole cure: a ten-class dense GP on 1,257 points still hung with it, in
the batched (vmapped) Cholesky factors over the latent functions. So ngvi no longer batches
linear algebra over latents: `ngvi.families.views.each_latent` runs them one after another.
"""

import os

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def configure() -> None:
    if os.environ.get("NGVI_KEEP_XLA_FLAGS"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()


configure()
