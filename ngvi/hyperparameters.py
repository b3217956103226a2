"""Learning kernel and likelihood hyperparameters by maximising the ELBO.

`fit(..., learn=LearnHyperparameters(...))` alternates (Salimbeni, Eleftheriadis & Hensman
2018, "Natural gradients in practice"):

1. one strategy step on `q` at the current hyperparameters `theta`;
2. one optax step on `theta` maximising `ELBO(theta, q)` with `q`'s parameters held fixed.

A family holds only its own parameters (for a dense GP, the sites), so `q` read under the new
`theta` is the posterior of the new model: the sites, not the moments, are held fixed. At a
fixed point `q` is optimal for `theta`, so `d ELBO / d theta = d L(theta) / d theta` where
`L(theta) = max_q ELBO(theta, q)` (envelope theorem). For a Gaussian likelihood `L` is the exact
log marginal likelihood, so the learned `theta` is its maximiser (type-II maximum likelihood).
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, PyTree

from .parameters import learnable_filter


class LearnHyperparameters(eqx.Module):
    """Which hyperparameters `fit` learns, and with which optax optimizer.

    **Arguments:**

    - `optimizer`: an `optax.GradientTransformation` (default `optax.adam(1e-2)`); it minimises
      `-ELBO` over the learned leaves.
    - `where`: a function `model -> pytree of sub-modules / arrays` selecting what is learned,
      like `eqx.tree_at`'s `where`; every inexact array inside the selected nodes is learned.
      The default (`None`) learns every field declared with `ngvi.learnable()`: the kernel's
      log-variance and log-lengthscales, the Gaussian noise, the Student-t scale and degrees
      of freedom, a sparse model's inducing inputs, and any such field of a user likelihood
      or kernel; never the data, the prior mean, the jitter or an exposure.
    - `gtol`: with full batches, `fit` reports `converged` only when, besides the ELBO's
      change, the gradient is small: `max |d ELBO / d theta| <= gtol (1 + |ELBO|)` over the
      learned leaves (default `1e-5`, as `ngvi.fit_hyperparameters`). Without it a learner
      taking tiny steps (`optax.sgd(1e-11)`) "converged" at the starting hyperparameters. On
      minibatches the gradient is a noisy estimate and only the smoothed ELBO is judged.
    - `hyperprior`: `model -> log p(theta)` up to a constant (e.g. `ngvi.SignalVariancePrior`):
      minimise `-(ELBO + log p(theta))` instead (MAP-II), as `ngvi.fit_hyperparameters` does.

    ```python
    learn = ngvi.LearnHyperparameters(optax.adam(1e-2), where=lambda m: m.prior.kernel)
    result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=500, learn=learn)
    result.model.prior.kernel.lengthscale
    ```
    """

    optimizer: optax.GradientTransformation = eqx.field(default_factory=lambda: optax.adam(1e-2))
    where: Callable | None = None
    gtol: float = 1e-5
    hyperprior: Callable | None = None

    def __check_init__(self):
        if not self.gtol >= 0:
            raise ValueError(f"`gtol` must be >= 0, got {self.gtol}.")

    def filter_spec(self, model) -> PyTree[bool]:
        """A pytree of bools shaped like `model`: `True` on the leaves that are learned."""
        if self.where is None:
            return learnable_filter(model)
        spec = jax.tree.map(lambda _: False, model)
        try:
            spec = eqx.tree_at(
                self.where, spec, replace_fn=lambda node: jax.tree.map(lambda _: True, node)
            )
        except Exception as error:
            raise ValueError(
                f"`where` could not select nodes of the model ({type(error).__name__}: {error}); "
                "it must return sub-modules or array fields, e.g. `lambda m: m.prior.kernel`."
            ) from None
        return jax.tree.map(lambda chosen, leaf: chosen and eqx.is_inexact_array(leaf), spec, model)

    def partition(self, model) -> tuple[PyTree, PyTree]:
        """`(learned, rest)` with `eqx.combine(learned, rest) == model`."""
        return eqx.partition(model, self.filter_spec(model))

    def step(self, learned, rest, q, batch, opt_state) -> tuple[PyTree, optax.OptState, Array]:
        """One optax step on the learned leaves, minimising `-ELBO(theta, q)` (on `batch`: its
        unbiased estimate). Also returns whether `theta` was stationary before the step
        (`max |dELBO/dtheta| <= gtol (1 + |ELBO|)`; always `True` on a minibatch)."""

        def loss(theta):
            model = eqx.combine(theta, rest)
            log_prior = 0.0 if self.hyperprior is None else self.hyperprior(model)
            return -(model.elbo(q, batch) + log_prior)

        value, grads = jax.value_and_grad(loss)(learned)
        largest = optax.tree.norm(grads, ord=jnp.inf)  # max |dELBO/dtheta| over all leaves
        stationary = (largest <= self.gtol * (1.0 + jnp.abs(value))) | (batch is not None)
        updates, opt_state = self.optimizer.update(grads, opt_state, learned)
        return optax.apply_updates(learned, updates), opt_state, stationary


def has_learnable(learned: PyTree) -> bool:
    """True when the learned partition holds at least one array."""
    return len(jax.tree_util.tree_leaves(learned)) > 0
