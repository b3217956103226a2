"""The data a model is fitted to, and the host-side checks that run before any compilation."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._validation import check_finite


class Data(eqx.Module):
    """Inputs and targets, row `i` of each belonging to data point `i`.

    - `X`: inputs `(n, d)` (for a linear model, the design matrix).
    - `y`: targets `(n,)`, already in the likelihood's encoding (e.g. labels in {0, 1}).

    A batch is a `Data` too: `data[indices]`.
    """

    X: Float[Array, "n d"]
    y: Float[Array, " n"]

    @property
    def num_points(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, index) -> "Data":
        return Data(self.X[index], self.y[index])


def as_inputs(X, name: str = "X") -> np.ndarray:
    """`X` as a finite float array of shape `(n, d)` (a vector `(n,)` becomes `(n, 1)`).

    **Raises:** `ValueError` for NaN/inf, more than two dimensions, no rows or no columns.
    """
    array = check_finite(X, name)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n,) or (n, d); got shape {array.shape}.")
    if array.shape[0] == 0:
        raise ValueError(f"`{name}` has no rows: a model needs at least one data point.")
    if array.shape[1] == 0:
        raise ValueError(f"`{name}` has no columns: each row needs at least one input value.")
    return array


def prepare_data(likelihood, X, y) -> Data:
    """Check `X` and `y` on the host and return them as a `Data` in the default float dtype.

    `y` is checked by `likelihood.prepare_targets` (its support: labels, counts, ...).
    """
    inputs = as_inputs(X)
    targets = check_finite(y, "y")
    if targets.ndim == 2 and targets.shape[1] == 1:
        targets = targets[:, 0]
    if targets.ndim != 1:
        raise ValueError(f"`y` must have shape (n,); got shape {targets.shape}.")
    if targets.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"`X` and `y` must have the same number of rows; got X with {inputs.shape[0]} "
            f"and y with {targets.shape[0]}."
        )
    targets = likelihood.prepare_targets(targets)
    dtype = jnp.zeros(()).dtype
    return Data(jnp.asarray(inputs, dtype), jnp.asarray(targets, dtype))
