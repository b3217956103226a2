"""Data whose rows are spread over devices (and hosts) with `jax.sharding`.

A user shards `X` and `y` by rows over a mesh axis, e.g.
`jax.device_put(X, NamedSharding(mesh, P("data")))`; `RowSharding.of(X)` reads that layout and
the sparse model then runs every pass over its rows with `jax.shard_map`: each device works on
its own rows and one `psum` combines the results. Everything else (the inducing inputs, the
hyperparameters, `q`) is replicated. Per step the devices exchange the `O(M^2)` site statistics
(and, with minibatches, the `B` rows of the batch); the data itself never moves.

The mesh is rebuilt with `AxisType.Auto` axes (same devices, same layout, no copy), so the
compiled fit mixes sharded and replicated arrays without the caller entering a mesh context
(`jax.make_mesh` gives `Explicit` axes by default).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Int, PyTree


@dataclasses.dataclass(frozen=True)
class RowSharding:
    """Rows split evenly over the mesh axis (or axes) `axis`; replicated over any others."""

    mesh: Mesh
    axis: str | tuple[str, ...]

    @classmethod
    def of(cls, array) -> "RowSharding | None":
        """The row layout of `array`, or `None` if it is not split by rows over devices.

        **Raises:** `ValueError` for a layout the models cannot use (split by columns).
        """
        sharding = getattr(array, "sharding", None)
        if not isinstance(sharding, NamedSharding) or sharding.mesh.size == 1:
            return None
        spec = tuple(sharding.spec) + (None,) * (array.ndim - len(sharding.spec))
        if any(entry is not None for entry in spec[1:]):
            raise ValueError(
                f"The data is sharded as {sharding.spec}: shard it by rows only, e.g. "
                "`NamedSharding(mesh, P('data'))`."
            )
        if spec[0] is None:
            return None
        mesh = sharding.mesh
        auto = Mesh(
            mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * len(mesh.axis_names)
        )
        return cls(auto, spec[0])

    @property
    def num_shards(self) -> int:
        names = (self.axis,) if isinstance(self.axis, str) else self.axis
        return int(np.prod([self.mesh.shape[name] for name in names]))

    @property
    def rows(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(self.axis))

    def _shard_map(self, fn, rows: PyTree, out_specs):
        spec = PartitionSpec(self.axis)
        return jax.shard_map(fn, mesh=self.mesh, in_specs=(spec,), out_specs=out_specs)(rows)

    def sum_rows(self, fn, rows: PyTree) -> PyTree:
        """`sum over devices of fn(their rows)`: one all-reduce; the result is replicated."""
        return self._shard_map(
            lambda local: jax.lax.psum(fn(local), self.axis), rows, PartitionSpec()
        )

    def map_rows(self, fn, rows: PyTree, replicated: PyTree = None) -> PyTree:
        """`fn(local rows, replicated)` on each device's rows; its per-row outputs stay where
        the rows are."""
        spec = PartitionSpec(self.axis)
        return jax.shard_map(fn, mesh=self.mesh, in_specs=(spec, PartitionSpec()), out_specs=spec)(
            rows, replicated
        )

    def take(self, rows: PyTree, indices: Int[Array, " B"]) -> PyTree:
        """`rows[indices]`, replicated: each device copies the requested rows it holds into a
        zero buffer of `B` rows and one all-reduce assembles the batch (no all-gather of the
        data)."""

        def local(shard, indices):
            count = jax.tree_util.tree_leaves(shard)[0].shape[0]
            position = indices - jax.lax.axis_index(self.axis) * count
            mine = (position >= 0) & (position < count)
            safe = jnp.clip(position, 0, count - 1)

            def pick(x):
                return jnp.where(mine.reshape((-1,) + (1,) * (x.ndim - 1)), x[safe], 0)

            return jax.lax.psum(jax.tree.map(pick, shard), self.axis)

        spec = PartitionSpec(self.axis)
        return jax.shard_map(
            local, mesh=self.mesh, in_specs=(spec, PartitionSpec()), out_specs=PartitionSpec()
        )(rows, indices)

    def assemble(self, shape: tuple[int, ...], pieces: list[tuple[object, np.ndarray]]) -> Array:
        """A global array of `shape` from `(device, local rows)` pairs, laid out by rows."""
        sharding = self.rows
        arrays = [jax.device_put(piece, device) for device, piece in pieces]
        return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def local_row_blocks(array) -> list[tuple[object, slice, np.ndarray]]:
    """`(device, row slice, host copy)` for each block of `array` held by this process."""
    blocks = []
    for shard in array.addressable_shards:
        rows = shard.index[0] if shard.index else slice(None)
        blocks.append((shard.device, rows, np.asarray(shard.data)))
    return blocks
