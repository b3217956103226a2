"""Host-side checks of user input, run before anything is traced or compiled.

Every check raises a `ValueError` whose message names the offending argument, so a user
sees "`lengthscale` must be positive, got -1.0" rather than a NaN twenty steps later.
Checks on traced values (inside `jit`/`grad`) are skipped: they were done when the
concrete value entered the library.
"""

import jax
import numpy as np


def is_concrete(value) -> bool:
    """True when `value` holds data we can inspect now (not a JAX tracer)."""
    leaves = jax.tree_util.tree_leaves(value)
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def check_positive(value, name: str) -> None:
    """Raise if any entry of a concrete `value` is not a finite, strictly positive number."""
    if not is_concrete(value):
        return
    array = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    if not np.all(array > 0):
        raise ValueError(f"`{name}` must be positive, got {value!r}.")


def check_finite(value, name: str) -> np.ndarray:
    """Return `value` as a float NumPy array, raising if it has NaN or inf entries or is
    complex (NumPy would drop the imaginary part with only a `ComplexWarning`)."""
    if np.iscomplexobj(value):
        raise ValueError(f"`{name}` must be real-valued; got complex values.")
    try:
        array = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`{name}` must be numeric: {error}") from None
    bad = ~np.isfinite(array)
    if np.any(bad):
        where = np.argwhere(bad)[:3].tolist()
        raise ValueError(
            f"`{name}` contains {int(bad.sum())} NaN/inf value(s), first at index {where}."
        )
    return array


def is_whole_number(value) -> bool:
    """Whether `value` is a whole number (an integer, or an integral float such as `4096.0`),
    and not a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        return float(value).is_integer()
    except (TypeError, ValueError, OverflowError):
        return False
