"""Streaming over the rows of a data set in fixed-size chunks, so that nothing of size
`N x M` is ever formed.

Chunk `k` covers rows `[k c, k c + c)`; the last chunk starts at `N - c` instead (so every
chunk has the static size `c` without padding or copying the data) and masks the rows an
earlier chunk already covered.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


def balanced(num_rows: int, chunk: int) -> int:
    """The chunk size at most `chunk` that covers `num_rows` in the fewest, most equal chunks
    (5,300 rows in chunks of at most 4,096: two of 2,650, not 4,096 twice with 2,892 rows
    done twice)."""
    count = math.ceil(num_rows / min(chunk, num_rows))
    return math.ceil(num_rows / count)


def _starts(num_rows: int, chunk: int) -> Array:
    count = math.ceil(num_rows / chunk)
    return jnp.minimum(jnp.arange(count) * chunk, num_rows - chunk)


def _rows(tree: PyTree, start, chunk: int) -> PyTree:
    return jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=0), tree)


def chunked_sum(fn, rows: PyTree, chunk: int) -> PyTree:
    """`sum_k fn(rows[chunk k], weight_k)`, where `weight_k` is 1 on the rows the chunk
    contributes and 0 on those an earlier chunk already covered; `fn` must weight its
    per-row terms by it. One pass of `lax.scan`, memory of one chunk."""
    num_rows = jax.tree_util.tree_leaves(rows)[0].shape[0]
    chunk = balanced(num_rows, chunk)
    starts = _starts(num_rows, chunk)
    offsets = jnp.arange(chunk)

    def one(k, start):
        weight = (start + offsets >= k * chunk).astype(jax.tree_util.tree_leaves(rows)[0].dtype)
        return fn(_rows(rows, start, chunk), weight)

    first = one(0, starts[0])
    if starts.shape[0] == 1:
        return first

    def body(total, k_start):
        k, start = k_start
        return jax.tree.map(jnp.add, total, one(k, start)), None

    ks = jnp.arange(1, starts.shape[0])
    total, _ = jax.lax.scan(body, first, (ks, starts[1:]))
    return total


def chunked_rows(fn, rows: PyTree, chunk: int) -> PyTree:
    """`fn` applied chunk by chunk to rows, its per-row outputs (leading axis `c`) assembled
    into arrays with `N` rows: `O(N)` output, one chunk of work memory (a `lax.scan` writing
    each chunk into its place)."""
    num_rows = jax.tree_util.tree_leaves(rows)[0].shape[0]
    chunk = balanced(num_rows, chunk)
    starts = _starts(num_rows, chunk)
    if starts.shape[0] == 1:
        return fn(rows)
    shapes = jax.eval_shape(fn, _rows(rows, 0, chunk))
    buffers = jax.tree.map(lambda s: jnp.zeros((num_rows,) + s.shape[1:], s.dtype), shapes)

    def body(out, start):
        values = fn(_rows(rows, start, chunk))
        out = jax.tree.map(
            lambda o, v: jax.lax.dynamic_update_slice_in_dim(o, v, start, axis=0), out, values
        )
        return out, None

    out, _ = jax.lax.scan(body, buffers, starts)
    return out


def mapped_rows(fn, rows: PyTree, chunk: int) -> PyTree:
    """As `chunked_rows`, without a loop carry (`lax.map`, then the chunks concatenated), for
    use inside `shard_map`, where a carry created outside the mapped rows has the wrong
    varying-axis type."""
    num_rows = jax.tree_util.tree_leaves(rows)[0].shape[0]
    chunk = balanced(num_rows, chunk)
    starts = _starts(num_rows, chunk)
    count = starts.shape[0]
    if count == 1:
        return fn(rows)
    outputs = jax.lax.map(lambda start: fn(_rows(rows, start, chunk)), starts)
    overlap = count * chunk - num_rows  # rows of the last chunk an earlier one covered

    def assemble(out):
        whole = out[:-1].reshape((-1,) + out.shape[2:])
        return jnp.concatenate([whole, out[-1, overlap:]], axis=0)

    return jax.tree.map(assemble, outputs)
