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
