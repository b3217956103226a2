"""Marking which fields of a model are hyperparameters that `fit(..., learn=...)` may learn.

A field is learnable when it is declared with [`learnable`][ngvi.learnable]; every inexact
array inside it (directly, or inside a sub-module it holds) is then learned by default. The
kernels' log-variance and log-lengthscales, the Gaussian noise, the Student-t scale and degrees
of freedom and a sparse model's inducing inputs are marked; data, prior means, jitter and
exposures are not.

```python
class Laplace(ngvi.likelihoods.AbstractLikelihood):
    log_scale: jax.Array = ngvi.learnable(default_factory=lambda: jnp.asarray(0.0))

    def log_prob(self, f, y):
        return -jnp.abs(y - f) * jnp.exp(-self.log_scale) - self.log_scale - jnp.log(2.0)
```
"""

import dataclasses

import equinox as eqx
import jax
from jaxtyping import PyTree

_LEARNABLE = "ngvi_learnable"


def learnable(**kwargs):
    """`eqx.field(**kwargs)` marked as a learnable hyperparameter (see the module docstring)."""
    metadata = dict(kwargs.pop("metadata", {}) or {})
    metadata[_LEARNABLE] = True
    return eqx.field(metadata=metadata, **kwargs)


def _field_is_learnable(node, name) -> bool:
    fields = getattr(type(node), "__dataclass_fields__", {})
    field = fields.get(name)
    return field is not None and bool(field.metadata.get(_LEARNABLE, False))


def learnable_filter(tree: PyTree) -> PyTree[bool]:
    """A pytree of bools shaped like `tree`: `True` on the inexact arrays that sit inside a
    field declared with `learnable()` (at any depth)."""
    paths_and_leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    flags = []
    for path, leaf in paths_and_leaves:
        node, marked = tree, False
        for key in path:
            name = getattr(key, "name", None)
            if name is not None and dataclasses.is_dataclass(node):
                marked = marked or _field_is_learnable(node, name)
                node = getattr(node, name)
            elif hasattr(key, "idx"):
                node = node[key.idx]
            elif hasattr(key, "key"):
                node = node[key.key]
        if marked and not eqx.is_inexact_array(leaf):
            raise TypeError(
                f"The field `{jax.tree_util.keystr(path)}` is declared `learnable()` but holds "
                f"{leaf!r} ({type(leaf).__name__}), which cannot be learned (it would be left "
                "as it is, silently): store a floating-point array, e.g. "
                "`jnp.asarray(value, dtype=float)` in `__init__`."
            )
        flags.append(marked)
    return jax.tree_util.tree_unflatten(treedef, flags)
