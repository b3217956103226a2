"""The data a model is fitted to, and the host-side checks that run before any compilation."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._sharding import RowSharding, local_row_blocks
from ._validation import check_finite


class Data(eqx.Module):
    """Inputs and targets, row `i` of each belonging to data point `i`.

    - `X`: inputs `(n, d)` (for a linear model, the design matrix).
    - `y`: targets `(n,)`, already in the likelihood's encoding (e.g. labels in {0, 1}).
    - `weight`: optional per-point weights `(n,)` of the data term, `sum_i w_i E[log p_i]`
      (`None`: all 1). A weight of 0 removes a point from the fit; the estimators pad
      training sets to a few bucket sizes with such points, so that folds of slightly
      different sizes share one compiled fit.

    A batch is a `Data` too: `data[indices]`.
    """

    X: Float[Array, "n d"]
    y: Float[Array, " n"]
    weight: Float[Array, " n"] | None = None

    @property
    def num_points(self) -> int:
        return self.y.shape[0]

    def __getitem__(self, index) -> "Data":
        weight = None if self.weight is None else self.weight[index]
        return Data(self.X[index], self.y[index], weight)


def weighted(weight: Float[Array, " n"] | None, values: Array) -> Array:
    """`values` (per point along axis 0) times the points' weights (unchanged for `None`)."""
    if weight is None:
        return values
    return values * weight.reshape(weight.shape + (1,) * (values.ndim - 1)).astype(values.dtype)


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
        raise ValueError(f"`{name}` has no rows: give at least one point.")
    if array.shape[1] == 0:
        raise ValueError(f"`{name}` has no columns: each row needs at least one input value.")
    return array


def prepare_data(likelihood, X, y, weights=None) -> Data:
    """Check `X` and `y` on the host and return them as a `Data` in the default float dtype.

    `y` is checked by `likelihood.prepare_targets` (its support: labels, counts, ...);
    `weights` (optional, `(n,)`) must be finite and non-negative.

    **Raises:** `ValueError` naming the problem, and for `X` split by rows over devices (only
    `ngvi.SparseModel` takes sharded data: see `prepare_sharded_data`).
    """
    if RowSharding.of(X) is not None:
        raise ValueError(
            "`X` is sharded over devices, but this model holds every data point on one device "
            "(a dense GP factorises K(X, X)); use `ngvi.SparseModel` for sharded data."
        )
    inputs, targets = _checked(likelihood, X, y)
    dtype = jnp.zeros(()).dtype
    if weights is not None:
        weights = check_finite(weights, "weights")
        if weights.shape != targets.shape:
            raise ValueError(f"`weights` must have shape {targets.shape}; got {weights.shape}.")
        if np.any(weights < 0):
            raise ValueError("`weights` must be non-negative.")
        if not np.any(weights > 0):  # no data: any hyperparameters "converge"
            raise ValueError("`weights` are all 0: at least one point must carry weight.")
        weights = jnp.asarray(weights, dtype)
    return Data(jnp.asarray(inputs, dtype), jnp.asarray(targets, dtype), weights)


def prepare_sharded_data(likelihood, X, y, sharding) -> Data:
    """`prepare_data` for `X` split by rows over devices (a `RowSharding`): each process checks
    the rows it holds and places them back where they were, so no host ever holds all of the
    data. `y` may be sharded the same way, or (in a single process) a host array."""
    if X.ndim != 2:
        raise ValueError(f"Sharded `X` must have shape (n, d); got shape {X.shape}.")
    count, shards = X.shape[0], sharding.num_shards
    if count % shards:
        raise ValueError(
            f"`X` has {count} rows, which do not split evenly over {shards} devices: drop or "
            f"pad to a multiple of {shards} rows."
        )
    y = jnp.asarray(y) if not isinstance(y, jax.Array) else y
    if y.shape[:1] != (count,):
        raise ValueError(f"`X` has {count} rows but `y` has shape {y.shape}.")
    y = jax.device_put(y, X.sharding)  # a no-op when y is already laid out like X
    dtype = jnp.zeros(()).dtype
    x_pieces, y_pieces = [], []
    for (device, rows, x_local), (_, _, y_local) in zip(
        local_row_blocks(X), local_row_blocks(y), strict=True
    ):
        try:
            inputs, targets = _checked(likelihood, x_local, y_local)
        except ValueError as error:
            raise ValueError(
                f"In rows {rows.start}:{rows.stop} of the sharded data: {error}"
            ) from None
        x_pieces.append((device, inputs.astype(dtype)))
        y_pieces.append((device, np.asarray(targets, dtype)))
    return Data(
        sharding.assemble((count, X.shape[1]), x_pieces), sharding.assemble((count,), y_pieces)
    )


def _checked(likelihood, X, y) -> tuple[np.ndarray, np.ndarray]:
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
    return inputs, likelihood.prepare_targets(targets)
