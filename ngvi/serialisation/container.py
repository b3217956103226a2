"""The file format of `ngvi.save` and of fit checkpoints, and atomic writes.

A file is three parts:

1. the line `NGVI\\n`;
2. a header: one line of JSON with the format (`"fit-result"`, `"checkpoint"`), its version,
   the version of ngvi that wrote it, the shapes and dtypes of the arrays, and the length and
   SHA-256 of the payload, plus what the format adds (the tree description, the classes), and
   last the SHA-256 of the header itself (from format version 2; version 1 files, which lack
   it, are still read);
3. the payload: the arrays, written by `eqx.tree_serialise_leaves` (NumPy's `.npy` format,
   read back with `allow_pickle=False`).

Reading checks each part in turn, so a file that is truncated, corrupted, of another format or
of a newer version gives one `LoadError` line that says which. Writing goes to a temporary file
in the same folder, flushed to disk, then `os.replace`d over the target: a reader sees the old
file or the new one, never a part of either.
"""

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np

MAGIC = b"NGVI\n"


class LoadError(ValueError):
    """A file that `ngvi.load` (or a checkpoint resume) cannot read: the message is one line
    that names the file and the problem (truncated, corrupted, not an ngvi file, written by a
    newer version, incompatible with the current settings or fit)."""


def _temporary_affixes(path: Path) -> tuple[str, str]:
    """The prefix and suffix of `atomic_write`'s temporary files for `path`."""
    return f".{path.name}.", ".tmp"


def atomic_write(path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    prefix, suffix = _temporary_affixes(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        os.chmod(temporary, _mode_for(path))  # mkstemp's 0600 would hide the file from others
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    """The permissions `path` has, or those a new file gets under the process's umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def remove_stale_temporaries(path) -> None:
    """Remove the temporary files `atomic_write` left for `path` when its process was killed
    mid-write (SIGKILL, power loss: nothing could clean up then)."""
    path = Path(path)
    prefix, suffix = _temporary_affixes(path)
    for stale in path.parent.glob(f"{prefix}*{suffix}"):
        stale.unlink(missing_ok=True)


def encode(header: dict, arrays: list[np.ndarray]) -> bytes:
    """The bytes of a file with this header (completed here) and these arrays."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, list(arrays))
    payload = buffer.getvalue()
    header = dict(header)
    header["arrays"] = [{"shape": list(a.shape), "dtype": a.dtype.name} for a in arrays]
    header["payload"] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    line = json.dumps(header, separators=(",", ":")).encode()
    # The header's own checksum, over its bytes up to this last field: a flipped bit in the
    # tree description, a plain value or an array index is corruption too, not a model.
    signed = line[:-1] + b',"header_sha256":"' + hashlib.sha256(line).hexdigest().encode() + b'"}'
    return MAGIC + signed + b"\n" + payload


HEADER_CHECKSUM_SINCE = 2
"""The format version (of both formats) from which the header carries its own checksum."""


def _header_is_intact(line: bytes) -> bool:
    """Whether `line` ends with `,"header_sha256":"<hex>"}` over the bytes before it."""
    field = b',"header_sha256":"'
    at = line.rfind(field)
    digest = line[at + len(field) : -2]
    if at < 0 or not line.endswith(b'"}'):
        return False
    return hashlib.sha256(line[:at] + b"}").hexdigest().encode() == digest


def decode(path, kind: str, version: int) -> tuple[dict, list[np.ndarray]]:
    """`(header, arrays)` of a file written by `encode` with `header["format"] == kind`.

    **Raises:** `LoadError` naming `path` and the problem."""

    def fail(problem: str):
        raise LoadError(f"cannot load {str(path)!r}: {problem}.")

    try:
        data = Path(path).read_bytes()
    except OSError as error:
        fail(error.strerror or str(error))
    if not data.startswith(MAGIC):
        fail("it is not an ngvi file (it does not start with 'NGVI')")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        fail("the file is truncated (its header is incomplete)")
    try:
        header = json.loads(data[len(MAGIC) : end])
        found, written = header["format"], int(header["version"])
        expected = header["payload"]
    except (ValueError, KeyError, TypeError):
        fail("its header is corrupted")
    if written >= HEADER_CHECKSUM_SINCE and not _header_is_intact(data[len(MAGIC) : end]):
        fail("the file is corrupted (its header does not match its checksum)")
    if found != kind:
        fail(f"it is a {found!r} file, not a {kind!r} file")
    if written > version:
        fail(
            f"it was written in {kind} format version {written} (by ngvi "
            f"{header.get('ngvi_version', '?')}), but this ngvi reads versions up to {version}: "
            "upgrade ngvi"
        )
    payload = data[end + 1 :]
    if len(payload) < expected["bytes"]:
        fail(f"the file is truncated ({len(payload)} of {expected['bytes']} payload bytes)")
    if (
        len(payload) > expected["bytes"]
        or hashlib.sha256(payload).hexdigest() != expected["sha256"]
    ):
        fail("the file is corrupted (its payload does not match the checksum in its header)")
    try:
        like = [np.empty(a["shape"], jnp.dtype(a["dtype"])) for a in header["arrays"]]
        arrays = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as error:  # a checksummed payload that still does not parse
        fail(f"its arrays cannot be read ({type(error).__name__})")
    for array, spec in zip(arrays, header["arrays"], strict=True):
        if list(array.shape) != spec["shape"] or array.dtype.name != spec["dtype"]:
            fail("its arrays do not match the shapes and dtypes in its header")
    return header, arrays
