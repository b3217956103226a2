import gc
import os

# The suite compiles thousands of small XLA programs and runs each a few times, so compiling
# dominates its time. With LLVM's optimisation off the default run took 13:48 instead of 22:57
# on two cores (with another speed-up in between; alone it saved about a quarter). XLA's own
# HLO passes (fusion, layout, loop-invariant code motion) still run, and neither setting uses
# fast math, so the programs compute what users' programs compute; subprocesses inherit the
# setting. `NGVI_TEST_FULL_OPTIMISATION=1` compiles as users' programs are compiled.
if os.environ.get("NGVI_TEST_FULL_OPTIMISATION") != "1":
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
    ).strip()

import jax  # noqa: E402  (after XLA_FLAGS: the backend reads them when it starts)
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
# As lineax does: implicit rank promotion is a bug waiting to happen, in the library and tests.
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """Return a function that hands out fresh, deterministic PRNG keys."""
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 1000))
    return lambda: next(keys)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Drop JAX's compiled executables after each test module.

    Every executable XLA:CPU compiles keeps a few memory mappings of JIT code alive for as long as
    JAX's caches hold it. A test worker that compiles thousands of functions (the whole suite in
    one process) climbs past the kernel's `vm.max_map_count` (65530 by default), and then LLVM fails
    with "Cannot allocate memory" or the worker dies in the compiler. Code compiled for one module
    is rarely reused by the next, so releasing it between modules costs little.
    """
    yield
    jax.clear_caches()
    gc.collect()
