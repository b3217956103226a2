"""Outputs that an interrupted command cannot leave half-written.

`ngvi fit` writes its files into a fresh temporary folder next to `--out` and, once every file
is complete, swaps it with `--out` in one step: `renameat2(RENAME_EXCHANGE)` on Linux, so the
folder is always either the complete previous results or the complete new ones; elsewhere two
renames with the previous folder kept aside until the second has happened. A single file
(`--save`, `ngvi predict --out`) is written to a temporary file and renamed over the target.
Targets are checked before any fitting, so a bad `--out` costs no time.
"""

import contextlib
import ctypes
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

from .data import UsageError

OUTPUTS = {"predictions.csv", "metrics.json", "plot.png"}


def check_out_folder(path: str, flag: str = "--out") -> Path:
    """Refuse an output folder that is a file, is not writable, or holds other files (the whole
    folder is replaced)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {path!r} is a file, not a folder.")
    _check_writable(out, path, flag)
    if out.exists():
        others = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
        if others:
            raise UsageError(
                f"{flag} {path!r} holds files that ngvi did not write ({', '.join(others[:3])}"
                f"{', ...' if len(others) > 3 else ''}); its contents are replaced as a whole, "
                "so choose a new or empty folder."
            )
    return out


def check_out_file(path: str, flag: str) -> Path:
    """Refuse an output file that is a folder or cannot be written."""
    out = Path(path)
    if out.is_dir():
        raise UsageError(f"{flag} {path!r} is a folder, not a file.")
    _check_writable(out, path, flag)
    return out


def check_not_an_input(out: Path, flag: str, *inputs: str | None) -> None:
    """Refuse an output that is one of the command's input files (it would be replaced)."""
    for given in inputs:
        if given is not None and Path(given).exists() and out.exists() and out.samefile(given):
            raise UsageError(f"{flag} {str(out)!r} is the input file {given!r}; write elsewhere.")


def _check_writable(out: Path, path: str, flag: str) -> None:
    """Refuse an output whose folder does not exist, or that cannot be created or replaced."""
    parent = out.resolve().parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {path!r}: the folder {str(parent)!r} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise UsageError(f"{flag} {path!r} is not writable.")


def write_failure(command: str, out: str, error: KeyboardInterrupt | OSError) -> int:
    """Say on stderr why `ngvi <command>` stopped before or while writing `out`, and return
    the exit code: 130 if interrupted (`out` is unchanged), 1 if a file could not be written."""
    if isinstance(error, KeyboardInterrupt):
        print(f"ngvi {command}: interrupted; {out!r} is unchanged.", file=sys.stderr)
        return 130
    where = error.filename or out
    print(f"ngvi {command}: error: cannot write {where!r}: {error.strerror}", file=sys.stderr)
    return 1


@contextlib.contextmanager
def replaced_folder(out: Path):
    """Yield a temporary folder to write into; on success it becomes `out` (see the module
    docstring); on any exception (Ctrl-C included) it is removed and `out` is untouched."""
    staging = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.new-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # as `mkdir` would make it, not mkdtemp's 0o700
    try:
        yield staging
        _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
        return
    if _exchange(staging, out):  # `staging` now holds the previous results
        return
    aside = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.old-"))
    os.rename(out, aside / "old")
    os.rename(staging, out)
    shutil.rmtree(aside, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Atomically exchange two paths (Linux `renameat2`); `False` where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange)
    return result == 0


@contextlib.contextmanager
def quiet():
    """Keep library warnings (Python warnings, JAX's log messages) out of a command's output:
    the command reports what matters (the fit's outcome) in its own words."""
    logger = logging.getLogger("jax")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
