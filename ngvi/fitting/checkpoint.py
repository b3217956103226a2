"""Checkpoints of a running fit: `ngvi.fit(..., checkpoint=path, checkpoint_every=k)`.

Between two chunks of the compiled loop, at every multiple of `k` steps and when the fit ends
(or is interrupted), `fit` writes its whole loop state (`Carry`: `q`, the strategy's state, the
learned hyperparameters and their optax state, the minibatch sampler, the step, the history
and the PRNG key) to `path`, atomically, in the file format of `ngvi.save` (a JSON header, then
the arrays through `eqx.tree_serialise_leaves`; see `ngvi.serialisation`).

The same call run again finds the file and continues from it. The loop is a pure function of
its state, so a fit killed at any point and resumed reaches the same posterior as one that ran
uninterrupted: bitwise for a deterministic strategy, and with the same minibatches and Monte
Carlo draws for a stochastic one (the key and the sampler are part of the state). A fit that
had ended resumes to the same result at once; delete the file to start afresh.

The header holds a fingerprint of the fit: the model (class, static fields, and a hash of
every array: data, hyperparameters), the strategy, the hyperparameter learner, the batch size,
the starting `q` and key, and `tol`. A checkpoint whose fingerprint differs from the current
call's is refused with a `ngvi.LoadError` that names what differs; `num_steps` may change
(the history is carried over), as long as the checkpoint is not beyond it. Functions (an optax
schedule, a learner's optimizer, a `ParametricModel`'s log-likelihood) enter the fingerprint by
name and by what they close over and their defaults (`serialisation.tree._closed_over`).
"""

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._validation import is_whole_number
from ..serialisation.container import (
    LoadError,
    atomic_write,
    decode,
    encode,
    remove_stale_temporaries,
)
from ..serialisation.tree import describe
from .loop import Carry, Loop
from .outcome import FitOutcome, is_one_of

FORMAT, VERSION = "checkpoint", 2
_PARTS = {
    "model": "the model (its class, data or hyperparameters)",
    "strategy": "the strategy",
    "learn": "the hyperparameter learning (`learn=`)",
    "batches": "the minibatches (`batch_size=`)",
    "start": "the starting posterior, strategy state or key (`q=`, `key=`)",
    "tol": "`tol`",
}


class Checkpoint:
    """Where and how often a fit saves its state, and what fit it belongs to."""

    def __init__(self, path, every: int, num_steps: int, fingerprint: dict, summary: dict):
        self.path, self.every, self.num_steps = Path(path), every, num_steps
        self.fingerprint, self.summary = fingerprint, summary
        self.saved_at = None

    @classmethod
    def open(cls, path, every, loop: Loop, carry: Carry, num_steps: int, tol, data=None):
        """A `Checkpoint` for this fit, or `None` without a `path`.

        **Raises:** `ValueError` for a bad `every` or a folder that does not exist, and for a
        streamed fit (`data=`), whose reader position is not part of the state."""
        if path is None:
            return None
        if not is_whole_number(every) or every < 1:
            raise ValueError(f"`checkpoint_every` must be a positive integer, got {every!r}.")
        if data is not None:
            raise ValueError("`checkpoint=` is not supported for a streamed fit (`data=`) yet.")
        folder = Path(path).resolve().parent
        if not folder.is_dir():
            raise ValueError(f"cannot write the checkpoint {str(path)!r}: no folder {folder}.")
        model = loop.full_model(carry.learned)
        parts = {
            "model": model,
            "strategy": loop.strategy,
            "learn": loop.learn,
            "batches": loop.minibatches,
            "start": (carry.q, carry.state, carry.key),
            "tol": float(tol),
        }
        fingerprint = {name: describe(part, None) for name, part in parts.items()}
        summary = {
            "model": f"a {type(model).__name__} on {model.num_data} points",
            "strategy": type(loop.strategy).__name__,
        }
        remove_stale_temporaries(path)  # of an earlier run killed while writing this file
        return cls(path, int(every), num_steps, json.loads(json.dumps(fingerprint)), summary)

    def stop_at(self, before: int, stop_at: int) -> int:
        """`stop_at`, cut at the next multiple of `every` after `before`."""
        return min(stop_at, (before // self.every + 1) * self.every)

    def after_chunk(self, carry: Carry) -> None:
        """Save if the loop is at a multiple of `every` or has ended."""
        step = int(carry.step)
        ended = not is_one_of(carry.outcome, FitOutcome.max_steps) or step >= self.num_steps
        if step != self.saved_at and (step % self.every == 0 or ended):
            self.save(carry)

    def finish(self, carry: Carry) -> None:
        """Save the state a fit ended (or was interrupted) in, unless it is saved already."""
        if int(carry.step) != self.saved_at:
            self.save(carry)

    def save(self, carry: Carry) -> None:
        """Write `carry` (an interrupted one as running, so that it resumes)."""
        if is_one_of(carry.outcome, FitOutcome.interrupted):
            carry = eqx.tree_at(lambda c: c.outcome, carry, FitOutcome.max_steps)
        leaves = jax.tree.leaves(carry)
        header = {
            "format": FORMAT,
            "version": VERSION,
            "step": int(carry.step),
            "dtype": str(carry.q.parameters[0].dtype),
            "history_length": int(carry.history.elbo.shape[0]),
            "fingerprint": self.fingerprint,
            "summary": self.summary,
        }
        atomic_write(self.path, encode(header, [_to_numpy(leaf) for leaf in leaves]))
        self.saved_at = int(carry.step)

    def resume(self, carry: Carry) -> Carry:
        """`carry` as the checkpoint left it, or `carry` itself when there is no file yet.

        **Raises:** `LoadError` for an unreadable file or one written by a different fit."""
        if not self.path.exists():
            return carry
        header, arrays = decode(self.path, FORMAT, VERSION)
        where = f"cannot resume from the checkpoint {str(self.path)!r}"
        saved, current = header.get("dtype"), str(carry.q.parameters[0].dtype)
        if saved is not None and saved != current:
            hint = " (enable `jax_enable_x64` first)" if saved == "float64" else ""
            raise LoadError(
                f"{where}: it holds a {saved} fit and this one runs in {current}{hint}."
            )
        self._check_same_fit(header, where)
        length = int(header["history_length"])
        like = eqx.tree_at(
            lambda c: c.history,
            carry,
            jax.tree.map(lambda b: jnp.zeros((length,), b.dtype), carry.history),
        )
        leaves, treedef = jax.tree.flatten(like)
        shapes = [(x.shape, x.dtype) for x in map(_to_numpy, leaves)]
        if shapes != [(a.shape, a.dtype) for a in arrays]:
            raise LoadError(f"{where}: the fit's state has other shapes or dtypes than its own.")
        loaded = treedef.unflatten(
            [_restore(leaf, a) for leaf, a in zip(leaves, arrays, strict=True)]
        )
        step = int(loaded.step)
        if step > self.num_steps:
            raise LoadError(
                f"{where}: it is at step {step}, beyond `num_steps={self.num_steps}`; raise "
                "num_steps or delete the checkpoint."
            )
        keep = min(length, carry.history.elbo.shape[0])
        history = jax.tree.map(
            lambda new, old: new.at[:keep].set(old[:keep]), carry.history, loaded.history
        )
        self.saved_at = step
        return eqx.tree_at(lambda c: c.history, loaded, history)

    def _check_same_fit(self, header: dict, where: str) -> None:
        theirs = header.get("fingerprint", {})
        for name, description in _PARTS.items():
            if theirs.get(name) != self.fingerprint[name]:
                mine, saved = self.summary.get(name), header.get("summary", {}).get(name)
                detail = f" (this call: {mine}; the checkpoint: {saved})" if mine != saved else ""
                raise LoadError(
                    f"{where}: it was written by a different fit: {description} differs{detail}. "
                    "Delete it or pass another path to start afresh."
                )


def _to_numpy(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    return np.asarray(leaf)


def _restore(like, array: np.ndarray):
    if isinstance(like, jax.Array) and jax.dtypes.issubdtype(like.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(array, impl=jax.random.key_impl(like))
    return jnp.asarray(array)
