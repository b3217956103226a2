"""An XLA CPU setting against a jaxlib hang, applied on request before JAX starts.

jaxlib's CPU runtime (0.10 here) can deadlock when its concurrency-optimised scheduler runs
batched linear algebra (vmapped Cholesky factors and triangular solves, as ngvi does for several
latent functions) beside other parallel work on few cores: every worker thread parks and the
program waits forever with no CPU use (reproduced with a two-latent dense GP of 300 points on
two cores; see also PyAutoFit issue #1530). The default scheduler did not deadlock there, and
with `NGVI_SAFE_XLA_SCHEDULER=1` ngvi adds `--xla_cpu_enable_concurrency_optimized_scheduler=
false` to `XLA_FLAGS` (unless the user set that flag). It only takes effect if JAX's backend
has not started yet (import ngvi before running JAX computations).

The flag is not the whole cure: a ten-class dense GP on 1,257 points still hung with it, in
the batched (vmapped) Cholesky factors over the latent functions. So ngvi no longer batches
linear algebra over latents: `ngvi.families.views.each_latent` runs them one after another,
which removes both hangs. With that in place the flag is **off by default** (the test suite
saw rare aborts inside XLA under parallel load with it set): `NGVI_SAFE_XLA_SCHEDULER=1`
turns it back on.
"""

import os

FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def configure() -> None:
    if os.environ.get("NGVI_SAFE_XLA_SCHEDULER", "0") != "1":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}".strip()


configure()
