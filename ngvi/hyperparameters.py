"""Learning kernel and likelihood hyperparameters by maximising the ELBO.

`fit(..., learn=LearnHyperparameters(...))` alternates (Salimbeni, Eleftheriadis & Hensman
2018, "Natural gradients in practice"):

1. one strategy step on `q` at the current hyperparameters `theta`;
2. one optax step on `theta` maximising `ELBO(theta, q)` with the variational *parameters* held
   fixed. For a GP the site family stores the prior covariance, so `q` is rebuilt from its sites
   under `theta` (`K` recomputed from the kernel): the sites, not the moments, are held fixed.

At a fixed point `q` is optimal for `theta`, so `d ELBO / d theta = d L(theta) / d theta` where
`L(theta) = max_q ELBO(theta, q)` (envelope theorem). For a Gaussian likelihood `L` is the exact
log marginal likelihood, so the learned `theta` is its maximiser (type-II maximum likelihood).
"""

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax
import optax
from jaxtyping import Array, PyTree

from .models import AbstractModel, GPModel
from .optimizers.base import AbstractOptimizer
from .variational import GaussianVariational


class LearnHyperparameters(eqx.Module):
    """Which hyperparameters `fit` learns, and with which optax optimizer.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation` (default `optax.adam(1e-2)`); it minimises
      `-ELBO` over the learned leaves, which are log-parameters (positive by construction).
    - `where`: a function `model -> pytree of sub-modules / arrays` selecting what is learned,
      like `eqx.tree_at`'s `where`; every inexact array inside the selected nodes is learned.
      The default (`None`) learns the GP prior's kernel (all its log-parameters) and the
      likelihood's `log_*` array fields (Gaussian `log_variance`, Student-t `log_scale` and
      `log_df`), never `X`, `y`, the prior mean, the jitter, a Poisson exposure or quadrature
      settings.

    ```python
    learn = ngvi.LearnHyperparameters(optax.adam(1e-2), where=lambda m: m.prior.kernel)
    result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=500, learn=learn)
    result.model.prior.kernel.lengthscale
    ```
    """

    optimizer: optax.GradientTransformation = eqx.field(default_factory=lambda: optax.adam(1e-2))
    where: Callable[[AbstractModel], PyTree] | None = None

    def filter_spec(self, model: AbstractModel) -> PyTree[bool]:
        """A pytree of bools shaped like `model`: `True` on the leaves that are learned."""
        where = default_where(model) if self.where is None else self.where
        spec = jax.tree.map(lambda _: False, model)
        try:
            spec = eqx.tree_at(
                where, spec, replace_fn=lambda node: jax.tree.map(lambda _: True, node)
            )
        except Exception as error:
            raise ValueError(
                f"`where` could not select nodes of the model ({type(error).__name__}: {error}); "
                "it must return sub-modules or array fields, e.g. `lambda m: m.prior.kernel`."
            ) from None
        return jax.tree.map(lambda chosen, leaf: chosen and eqx.is_inexact_array(leaf), spec, model)

    def partition(self, model: AbstractModel) -> tuple[PyTree, PyTree]:
        """`(learned, rest)` with `eqx.combine(learned, rest) == model`."""
        return eqx.partition(model, self.filter_spec(model))


def default_where(model: AbstractModel) -> Callable[[AbstractModel], tuple]:
    """The default selection: the GP kernel and the likelihood's `log_*` array fields."""
    names = [
        field.name
        for field in dataclasses.fields(model.likelihood)
        if field.name.startswith("log_")
        and eqx.is_inexact_array(getattr(model.likelihood, field.name, None))
    ]
    has_kernel = isinstance(model, GPModel)

    def where(m):
        kernel = (m.prior.kernel,) if has_kernel else ()
        return kernel + tuple(getattr(m.likelihood, name) for name in names)

    return where


def has_learnable(learned: PyTree) -> bool:
    """True when the learned partition holds at least one array."""
    return len(jax.tree_util.tree_leaves(learned)) > 0


def rebuild_variational(
    optimizer: AbstractOptimizer, model: AbstractModel, parameters: tuple[Array, Array]
) -> GaussianVariational:
    """The strategy's family under `model`'s (new) hyperparameters, with given parameters.

    For a GP site family this recomputes `K` from the kernel and keeps the sites.
    """
    return optimizer.init_variational(model).with_parameters(parameters)


def hyperparameter_step(
    learn: LearnHyperparameters,
    optimizer: AbstractOptimizer,
    learned: PyTree,
    rest: PyTree,
    parameters: tuple[Array, Array],
    opt_state: optax.OptState,
) -> tuple[PyTree, optax.OptState]:
    """One optax step on the learned leaves, minimising `-ELBO(theta, q(parameters; theta))`."""

    def loss(theta):
        model = eqx.combine(theta, rest)
        return -model.elbo(rebuild_variational(optimizer, model, parameters))

    grads = jax.grad(loss)(learned)
    updates, opt_state = learn.optimizer.update(grads, opt_state, learned)
    return optax.apply_updates(learned, updates), opt_state
