"""`Stream`: data that stays on the host (NumPy arrays or memory maps) and reaches the device
one batch at a time, for `ngvi.fit(model, strategy, batch_size=B, data=stream)`.

The fit draws the same batches as an in-memory minibatch fit with the same key (the row
indices come from the same sampler, run on the host), reads those rows from the arrays, checks
them against the likelihood and puts them on the device in a background thread while the
previous step runs. Device memory holds `q`, the inducing inputs and `prefetch + 1` batches,
whatever the number of rows; the full-data ELBO at the start and end of a fit is a pass over
the rows in chunks.

Why hand-written rather than a loader library: the part that is specific to ngvi (the same
index sequence as the compiled sampler, the likelihood's target checks) would be needed on top
of any loader, and what is left (a thread and a queue) is a few lines; grain would add
`array_record` and its own sampling semantics for no gain here.
"""

import queue
import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._data import Data, _checked
from ._validation import is_whole_number


class Stream:
    """Rows `(X, y)` on the host, read a batch at a time.

    **Arguments:**

    - `X`: `(N, d)` inputs: a NumPy array or a memory map (`np.load(path, mmap_mode="r")`,
      `np.memmap`); it is never copied whole.
    - `y`: `(N,)` targets, the same kind of array.
    - `prefetch`: how many batches are read ahead of the running step.

    ```python
    X = np.load("X.npy", mmap_mode="r"); y = np.load("y.npy", mmap_mode="r")
    model = ngvi.SparseModel(prior, likelihood, inducing=Z, num_data=len(y))
    result = ngvi.fit(model, ngvi.NaturalGradient(), 10_000, batch_size=4096,
                      data=ngvi.Stream(X, y))
    ```
    """

    def __init__(self, X, y, *, prefetch: int = 2):
        # Lists are read into memory (rows of a list cannot be taken by an index array);
        # arrays and memory maps are kept as they are and read batch by batch.
        X, y = (np.asarray(a) if isinstance(a, (list, tuple)) else a for a in (X, y))
        if np.ndim(X) != 2:
            raise ValueError(f"`X` must have shape (N, d); got shape {np.shape(X)}.")
        column = np.ndim(y) == 2 and np.shape(y)[1] == 1  # (N, 1), as in-memory models take
        if not (np.ndim(y) == 1 or column) or np.shape(y)[0] != np.shape(X)[0]:
            raise ValueError(f"`y` must have shape ({np.shape(X)[0]},); got {np.shape(y)}.")
        if not is_whole_number(prefetch) or prefetch < 1:
            raise ValueError(f"`prefetch` must be a positive integer, got {prefetch!r}.")
        self.X, self.y, self.prefetch = X, y, int(prefetch)

    def __len__(self) -> int:
        return int(np.shape(self.y)[0])

    @property
    def num_columns(self) -> int:
        return int(np.shape(self.X)[1])

    def rows(self, indices: np.ndarray, likelihood, dtype) -> Data:
        """The rows `indices` (in that order), checked, as a `Data` on the default device.
        Rows are read in increasing order (sequential reads from a memory map), then
        reordered."""
        order = np.argsort(indices, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(order.size)
        sorted_rows = np.asarray(indices)[order]
        X = np.asarray(self.X[sorted_rows])[inverse]
        y = np.asarray(self.y[sorted_rows]).reshape(-1)[inverse]
        try:
            X, y = _checked(likelihood, X, y)
        except ValueError as error:
            raise ValueError(_stream_error(error, X, y, sorted_rows[inverse])) from None
        return Data(jnp.asarray(X, dtype), jnp.asarray(y, dtype))

    def chunks(self, size: int, likelihood, dtype):
        """Consecutive blocks of at most `size` rows, as checked `Data` on the device."""
        for start in range(0, len(self), size):
            yield self.rows(np.arange(start, min(start + size, len(self))), likelihood, dtype)

    def elbo(self, model, q) -> tuple[jax.Array, jax.Array]:
        """The full-data ELBO of `q` under `model` (which holds no data) and its Monte Carlo
        standard error, from one pass over the rows in chunks of `model.chunk_size`."""
        data_term, variance, kl = 0.0, 0.0, None
        for chunk in self.chunks(model.chunk_size, model.likelihood, model.dtype):
            total, square, kl = _chunk_terms(model, q, chunk)
            data_term, variance = data_term + total, variance + square
        return data_term - kl, jnp.sqrt(variance)


def _stream_error(error: ValueError, X, y, rows: np.ndarray) -> str:
    """The message for a batch that failed its checks: the stream's own row numbers of the
    first non-finite values (the check's indices count within the batch: a NaN in row 499
    was reported "at index [[51, 0]]"), else the check's message."""
    for name, values in (("X", X), ("y", y)):
        try:
            finite = np.isfinite(np.asarray(values, dtype=float))
        except (TypeError, ValueError):
            continue
        bad = np.flatnonzero(~finite.reshape(finite.shape[0], -1).all(axis=1))
        if bad.size:
            shown = ", ".join(str(int(row)) for row in np.sort(rows[bad])[:3])
            more = "" if bad.size <= 3 else f" and {bad.size - 3} more"
            return (
                f"The stream's `{name}` holds NaN/inf in row(s) {shown}{more} (counting from "
                "0): remove or impute them."
            )
    return f"In a batch of the stream: {error}"


@eqx.filter_jit
def _chunk_terms(model, q, chunk: Data):
    """`sum_b E[log p(y_b | f_b)]`, the sum of the squared Monte Carlo errors, and the KL."""
    marginals, kl = model.latent_marginals_and_kl(q, chunk)
    expected = model.expected_log_likelihood(chunk.y, marginals)
    error = getattr(model.likelihood, "expected_log_prob_error", None)
    square = 0.0
    if error is not None:
        square = jnp.sum(error(chunk.y, marginals.mean, marginals.variance) ** 2)
    return jnp.sum(expected), square, kl


class Feeder:
    """Reads the batches of a streamed fit ahead in a background thread.

    It replays the fit loop's key sequence (`key, _, batch_key = split(key, 3)` per step) and
    its `Minibatches` sampler on the host CPU, so step `t` gets the rows an in-memory fit with
    the same key would draw."""

    def __init__(self, stream: Stream, model, minibatches, key, num_steps: int):
        self._queue: queue.Queue = queue.Queue(maxsize=stream.prefetch)
        self._stop = threading.Event()
        args = (stream, model.likelihood, model.dtype, minibatches, key, num_steps)
        self._thread = threading.Thread(target=self._fill, args=args, daemon=True)
        self._thread.start()

    def _fill(self, stream, likelihood, dtype, minibatches, key, num_steps):
        """The host twin of `Minibatches.next` (a test checks that they draw the same rows);
        its `N` row indices are a NumPy array, so they take no device memory."""
        try:
            cpu = jax.devices("cpu")[0]
            key = jax.device_put(key, cpu)
            count, size = len(stream), minibatches.batch_size
            order, position = None, count
            for _ in range(num_steps):
                key, _, batch_key = jax.random.split(key, 3)
                if position + size > count:
                    order = np.asarray(jax.random.permutation(batch_key, count), np.int32)
                    position = 0
                indices, position = order[position : position + size], position + size
                batch = stream.rows(indices, likelihood, dtype)
                while not self._stop.is_set():
                    try:
                        self._queue.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as error:  # handed to the fit's thread by `next`
            self._queue.put(error)

    def next(self) -> Data:
        """The next batch (raises what reading it raised)."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def check_stream(model, data: "Stream | None", batch_size) -> None:
    """Raise unless `data` is `None`, or a `Stream` that `model` (without data) can take."""
    if data is None:
        if getattr(model, "data", True) is None:
            raise ValueError(
                "This model holds no data: pass the rows with `data=ngvi.Stream(X, y)`."
            )
        return
    if not isinstance(data, Stream):
        raise TypeError(f"`data` must be an ngvi.Stream, got {type(data).__name__}.")
    if getattr(model, "data", None) is not None:
        raise ValueError(
            "`data=` streams the rows of a model made without data: build it as "
            "`ngvi.SparseModel(prior, likelihood, inducing=Z, num_data=len(stream))`."
        )
    if batch_size is None:
        raise ValueError("A streamed fit needs `batch_size`: it reads one batch per step.")
    if len(data) != model.num_data:
        raise ValueError(
            f"The stream has {len(data)} rows but the model was made with "
            f"num_data={model.num_data}."
        )
    columns = model.inducing.shape[1]
    if data.num_columns != columns:
        raise ValueError(
            f"The stream's X has {data.num_columns} columns but the inducing inputs have {columns}."
        )


def placeholder_batch(model, data: Stream, batch_size: int) -> Data:
    """Zeros shaped like one batch: the loop's batch slot before the first batch arrives."""
    return Data(
        jnp.zeros((batch_size, data.num_columns), model.dtype),
        jnp.zeros((batch_size,), model.dtype),
    )
