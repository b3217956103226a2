"""Saving fitted models and fit checkpoints: one file format, atomic writes, no pickle.

- `ngvi.save(path, result)` / `ngvi.load(path)`: a `FitResult` and everything in it.
- `ngvi.fit(..., checkpoint=path)` writes its loop state in the same format
  (`ngvi.fitting.checkpoint`).

Why Equinox serialisation and not orbax or pickle: the state is a pytree of a few arrays that
fits in one file; `eqx.tree_serialise_leaves` writes its arrays as `.npy` records, and a JSON
header describes the tree, so loading rebuilds it from ngvi's own classes without running code
named by the file (see `ngvi.serialisation.tree`). orbax would add a large dependency and a
directory per checkpoint for no gain at this size.
"""

from .container import LoadError as LoadError, atomic_write as atomic_write
from .result import load as load, read_metadata as read_metadata, save as save
