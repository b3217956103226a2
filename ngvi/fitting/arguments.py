"""`fit`'s checks of its arguments, before anything is compiled."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._validation import is_whole_number
from ..families import AbstractVariational
from ..hyperparameters import LearnHyperparameters
from ..models import AbstractModel
from ..models.base import check_no_per_point_parameters
from ..optimizers.base import AbstractOptimizer


def check_arguments(model, optimizer, num_steps, tol, batch_size, learn) -> None:
    if not isinstance(model, AbstractModel):
        raise TypeError(f"`model` must be an ngvi model, got {type(model).__name__}.")
    if not isinstance(optimizer, AbstractOptimizer):
        raise TypeError(f"`optimizer` must be an ngvi strategy, got {type(optimizer).__name__}.")
    if not is_whole_number(num_steps) or num_steps < 0:
        raise ValueError(f"`num_steps` must be a non-negative integer, got {num_steps!r}.")
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"`tol` must be a finite number >= 0, got {tol!r}.")
    if batch_size is not None:
        if not is_whole_number(batch_size):
            raise ValueError(f"`batch_size` must be an integer, got {batch_size!r}.")
        if not model.supports_minibatch:
            model.whitened_view(model.data[:1])  # raises the model's own explanation
            raise ValueError(f"{type(model).__name__} does not support minibatches.")
        check_no_per_point_parameters(model.likelihood, "a minibatch fit")
        if batch_size % model.row_shards:
            raise ValueError(
                f"`batch_size` ({batch_size}) must be a multiple of the {model.row_shards} "
                "devices the data is sharded over, so each device takes the same share."
            )
    if learn is not None and not isinstance(learn, LearnHyperparameters):
        raise TypeError(f"`learn` must be a LearnHyperparameters or None, got {type(learn)}.")


def checked_q(model, optimizer, q):
    """Refuse a `q` that is not this model's family (for this strategy's form) or whose
    parameters do not have the model's shapes."""
    if not isinstance(q, AbstractVariational):
        raise TypeError(f"`q` must be a variational family, got {type(q).__name__}.")
    expected = jax.eval_shape(lambda: model.init_variational(optimizer.form))
    if type(q) is not type(expected):
        raise TypeError(
            f"`q` is a {type(q).__name__}, but this model (family={model.family!r}) and "
            f"{type(optimizer).__name__} move a {type(expected).__name__}: start from "
            f"`model.init_variational({optimizer.form!r})`."
        )
    mismatch = shape_mismatch(q, expected)
    if mismatch:
        raise ValueError(mismatch)
    return q


def shape_mismatch(q, expected) -> str:
    """`""` if `q`'s parameters have the shapes of `expected` (the model's own family, from
    `jax.eval_shape` of `model.init_variational`); otherwise a sentence naming both."""
    got = [tuple(jnp.shape(p)) for p in q.parameters]
    want = [tuple(p.shape) for p in expected.parameters]
    if got == want:
        return ""
    return (
        f"`q` does not fit this model: its parameters have shapes {got}, but this model's "
        f"{type(expected).__name__} has {want} (was `q` fitted on another model?)."
    )


def check_em_settings(
    *, max_steps, max_inner_steps, memory_size, gtol, ftol, inner_tol, inner_fraction
) -> None:
    """Refuse `fit_hyperparameters`' settings that have no meaning: fewer than one re-solve
    step (F = max_q ELBO needs one) or L-BFGS pair, negative tolerances."""
    counts = (("max_steps", max_steps, 0), ("max_inner_steps", max_inner_steps, 1))
    for name, value, least in counts + (("memory_size", memory_size, 1),):
        if not is_whole_number(value) or value < least:
            raise ValueError(f"`{name}` must be an integer >= {least}, got {value!r}.")
    for name, value in (("gtol", gtol), ("ftol", ftol), ("inner_tol", inner_tol)):
        if not float(value) >= 0:
            raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
    if not 0 <= inner_fraction < 1:
        raise ValueError(f"`inner_fraction` must be in [0, 1), got {inner_fraction!r}.")


def with_strong_learned_leaves(model, learn: LearnHyperparameters):
    """`model` with the hyperparameters `learn` moves made strongly typed (values and dtypes
    unchanged), or `model` itself if none is weakly typed. A weak leaf (made from a Python
    scalar: `jnp.log(1.0)`) rides in the compiled loop's carry, comes back strongly typed
    after the first chunk, and the next chunk then compiled the loop again: a 60-step fit that
    learned a kernel made from Python floats compiled its loop four times."""
    learned, fixed = learn.partition(model)

    def is_weak(leaf) -> bool:
        return getattr(leaf, "weak_type", False)

    if not any(is_weak(leaf) for leaf in jax.tree.leaves(learned)):
        return model
    strong = jax.tree.map(lambda x: jax.device_put(np.asarray(x)) if is_weak(x) else x, learned)
    return eqx.combine(strong, fixed)


def check_hyperprior(hyperprior, model) -> None:
    """Refuse a `hyperprior` that does not map `model` to one real number (traced only, not
    run): inside the compiled loop the failure read "Gradient only defined for scalar-output
    functions", naming neither the argument nor the fix."""
    if hyperprior is None:
        return
    out = jax.eval_shape(hyperprior, model)
    if not (hasattr(out, "shape") and out.shape == () and jnp.issubdtype(out.dtype, jnp.floating)):
        got = f"shape {out.shape}, dtype {out.dtype}" if hasattr(out, "shape") else type(out)
        raise ValueError(
            f"`hyperprior` must map the model to a scalar log density (a float), got {got}; "
            "sum the log densities of the hyperparameters it covers."
        )
