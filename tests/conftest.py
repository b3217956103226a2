import gc

import jax
import pytest

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
