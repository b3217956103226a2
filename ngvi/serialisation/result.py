"""`ngvi.save` and `ngvi.load`: a fitted `FitResult` to a file and back."""

import json
import os
from pathlib import Path

import jax

from ..fitting.result import FitResult
from .container import LoadError, atomic_write, decode, encode
from .tree import TreeError, class_name, classes_in, describe, rebuild

FORMAT, VERSION = "fit-result", 2


def save(path: str | os.PathLike, result: FitResult, *, metadata: dict | None = None) -> None:
    """Save a fitted `FitResult` (its model with the learned hyperparameters and data, `q`,
    ELBO, history and outcome) to `path`, atomically.

    **Format.** A header line of JSON (format version, ngvi version, the classes of the model,
    likelihood and family, the dtype, every array's shape and dtype, a SHA-256 of the payload),
    then the arrays as `eqx.tree_serialise_leaves` writes them. The header also describes the
    pytree: each module's class and fields, so `load` rebuilds it without the caller having to
    construct a model first.

    **Why not pickle (or orbax).** Loading a pickle runs whatever code the file names; `load`
    only rebuilds classes of ngvi (or the `classes` its caller passes) and never calls their
    `__init__`, and NumPy reads the arrays with `allow_pickle=False`. The code of a function
    (a `ParametricModel`'s log-likelihood) is never stored: `load` takes it as an argument.
    orbax adds a dependency tree and a directory layout for a state that fits in one file.

    **Atomic.** The file is written to a temporary file in the same folder and renamed over
    `path`: an interrupted save leaves the previous file intact.

    A `SparseModel` whose data are sharded over devices is saved with the rows gathered on the
    host (single process) and loads on one device.

    **Arguments:**

    - `path`: the file to write (by convention `*.ngvi`).
    - `result`: what `ngvi.fit` returned.
    - `metadata`: optional JSON-serialisable facts to keep with it (e.g. how the inputs were
      standardised), read back with `ngvi.serialisation.read_metadata(path)`.

    **Raises:** `TypeError` for something that is not a `FitResult`; `ValueError` naming a part
    that cannot be saved (an object that is not a module, an array or a plain value).

    ```python
    result = ngvi.fit(model, ngvi.NaturalGradient(), 20)
    ngvi.save("model.ngvi", result)
    again = ngvi.load("model.ngvi")
    ngvi.predict(again.model, again.q, X_new)
    ```
    """
    if not isinstance(result, FitResult):
        raise TypeError(f"`ngvi.save` takes a FitResult, got {type(result).__name__}.")
    _check_target(Path(path))
    _check_metadata(metadata)
    model = result.model
    if getattr(model, "sharding", None) is not None:  # gather the rows; load on one device
        model = _replaced(model, sharding=None)
        result = _replaced(result, model=model)
    arrays: list = []
    try:
        tree = describe(result, arrays)
    except TreeError as error:
        raise ValueError(str(error)) from None
    header = {
        "format": FORMAT,
        "version": VERSION,
        "ngvi_version": _ngvi_version(),
        "model": class_name(type(model)),
        "likelihood": class_name(type(model.likelihood)),
        "family": class_name(type(result.q)),
        "dtype": str(model.dtype),
        "num_data": int(model.num_data),
        "num_steps": result.num_steps,
        "classes": sorted(classes_in(tree)),
        "metadata": metadata,
        "tree": tree,
    }
    atomic_write(path, encode(header, arrays))


def load(path: str | os.PathLike, *, classes=(), functions=()) -> FitResult:
    """Load a `FitResult` written by `ngvi.save`.

    **Arguments:**

    - `path`: the file.
    - `classes`: classes that are not part of ngvi which the result holds (a likelihood or
      kernel of your own); only these and ngvi's own classes are rebuilt.
    - `functions`: the functions the result holds, matched by name (`__qualname__`): a
      `ParametricModel`'s log-likelihood, whose code is not in the file.

    **Returns:** the `FitResult`, its arrays as JAX arrays in the dtype they were saved in.

    **Raises:** `ngvi.LoadError` (a `ValueError`), one line naming the file and the problem: not
    an ngvi file, truncated, corrupted (checksum), of a newer format version, float64 arrays
    while JAX runs in 32-bit mode (enable `jax_enable_x64`: they are not silently rounded), a
    class or function that is missing or has other fields in this version.
    """
    header, arrays = decode(path, FORMAT, VERSION)
    wide = sorted({a.dtype.name for a in arrays if a.dtype.itemsize == 8 and a.dtype.kind in "fic"})
    if wide and not jax.config.read("jax_enable_x64"):
        raise LoadError(
            f"cannot load {str(path)!r}: it holds {', '.join(wide)} arrays but JAX runs in 32-bit "
            "mode; enable it first with `jax.config.update('jax_enable_x64', True)`."
        )
    try:
        result = rebuild(header["tree"], arrays, classes, functions)
    except (TreeError, KeyError, TypeError, IndexError) as error:
        problem = str(error) if isinstance(error, TreeError) else "its description is corrupted"
        raise LoadError(f"cannot load {str(path)!r}: {problem}.") from None
    if not isinstance(result, FitResult):
        raise LoadError(f"cannot load {str(path)!r}: it does not hold a FitResult.")
    return result


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The `metadata` given to `ngvi.save` when it wrote `path` (`None` if none was).

    **Raises:** `ngvi.LoadError` as `load` does for an unreadable file."""
    header, _ = decode(path, FORMAT, VERSION)
    return header.get("metadata")


def _replaced(module, **changes):
    """A shallow copy of an `eqx.Module` with some fields (static ones too) replaced."""
    copy = object.__new__(type(module))
    for name, value in vars(module).items():
        object.__setattr__(copy, name, changes.get(name, value))
    return copy


def _ngvi_version() -> str:
    from .. import __version__

    return __version__


def _check_target(path: Path) -> None:
    """Refuse, naming `path`, what the atomic write would fail on naming its temporary file."""
    if path.is_dir():
        raise ValueError(f"cannot save to {str(path)!r}: it is a folder; give a file name.")
    if not path.parent.is_dir():
        folder = str(path.parent)
        raise ValueError(f"cannot save to {str(path)!r}: the folder {folder!r} does not exist.")


def _check_metadata(metadata) -> None:
    """Refuse metadata that would not come back as given: keys that are not strings (JSON
    turns `1` into `"1"`) and values JSON cannot hold (a NumPy scalar)."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        raise TypeError(f"`metadata` must be a dict, got {type(metadata).__name__}.")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValueError(f"`metadata` keys must be strings, got {key!r}.")
        try:
            json.dumps(value, allow_nan=True)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"`metadata[{key!r}]` cannot be saved as JSON ({error}); convert it to plain "
                "Python values (e.g. `float(x)`, `x.tolist()`)."
            ) from None
