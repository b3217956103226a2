"""Minibatches drawn inside the compiled fit loop, without replacement within an epoch."""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Int, PRNGKeyArray

from .._data import Data


class Minibatches(eqx.Module):
    """Batches of `batch_size` rows of the model's data, resident on the device.

    Each epoch is a fresh random permutation of the `N` rows cut into `N // batch_size`
    batches (the remainder is left out of that epoch, and differs between epochs), so every
    batch is a uniformly random subset and `N / B` times its data term is an unbiased estimate
    of the full-data term. The state is the permutation (`N` integers) and the position in it.
    """

    batch_size: int = eqx.field(static=True)

    def init(self, num_points: int) -> tuple[Int[Array, " N"], Int[Array, ""]]:
        """A state that starts a new epoch at the first batch."""
        if not 1 <= self.batch_size <= num_points:
            raise ValueError(
                f"`batch_size` must be between 1 and the number of data points ({num_points}), "
                f"got {self.batch_size}."
            )
        return jnp.arange(num_points, dtype=jnp.int32), jnp.asarray(num_points, jnp.int32)

    def next(self, state, key: PRNGKeyArray) -> tuple[Int[Array, " B"], tuple]:
        """The row indices of the next batch and the new state."""
        order, position = state
        num_points = order.shape[0]
        new_epoch = position + self.batch_size > num_points
        order = jax.lax.cond(
            new_epoch,
            lambda: jax.random.permutation(key, num_points).astype(order.dtype),
            lambda: order,
        )
        position = jnp.where(new_epoch, 0, position)
        indices = jax.lax.dynamic_slice(order, (position,), (self.batch_size,))
        return indices, (order, position + self.batch_size)

    def draw(self, model, state, key: PRNGKeyArray) -> tuple[Data, tuple]:
        """The next batch of `model`'s rows and the new state."""
        indices, state = self.next(state, key)
        return model.batch(indices), state


class StreamedBatches(eqx.Module):
    """Batches that come from outside the compiled loop (`ngvi.Stream`): the state is the
    current batch, which the fit replaces before each step."""

    def draw(self, model, state: Data, key: PRNGKeyArray) -> tuple[Data, Data]:
        del model, key
        return state, state
