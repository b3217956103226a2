"""The Euclidean baseline: optax on the whitened mean and Cholesky factor."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array

from .base import AbstractOptimizer, StepInfo, StepSize, check_step_size, step_size_at


class Adam(AbstractOptimizer):
    """Gradient ascent on the ELBO in whitened coordinates, with any optax optimizer.

    The family is the model's in its moment form (`model.init_variational("moments")`,
    a `WhitenedGaussianVariational`): `v ~ q(v) = N(m, S S^T)` over the model's whitened
    coordinates (`f(X) = m0 + chol(K) v` for a dense GP, `w = m0 + L0 v` for a linear model,
    `u = L_u v` for a sparse GP: the SVGP baseline). Each step takes the Euclidean gradient of

        ELBO(m, S) = sum_i E_q[log p(y_i | f_i)] - KL(q(v) || N(0, I))

    (closed forms or Gauss-Hermite quadrature; on a minibatch the data term is scaled by
    `N / B`) and hands `-ELBO` to optax, which minimises. No curvature: this is the baseline
    that shows what natural gradients buy (many more steps, and a step size to tune).

    **Arguments:**

    - `lr`: learning rate of the default `optax.adam(lr)`; a float or an optax schedule.
    - `optimizer`: any `optax.GradientTransformation`, used instead of `optax.adam(lr)`.
      Reuse the same `Adam` instance to reuse its compiled fit loop. Its step size is not
      known to `fit`, so each step reports the *effective* one (`effective_step_size`):
      the step size of the plain gradient step that would raise the ELBO as much to first
      order. A chain whose schedule decays to 0 then ends as `schedule_ended`, never as
      `converged` (reproducer: `optax.adam(exponential_decay(...))` was called converged 19
      nats short of the optimum, its ELBO changes divided by the unused `lr`).

    ```python
    result = ngvi.fit(model, ngvi.Adam(lr=0.05), num_steps=2000)
    ```
    """

    lr: StepSize = 1e-2
    optimizer: optax.GradientTransformation | None = None
    form = "moments"
    traced_step_size: ClassVar[bool] = True

    def __check_init__(self):
        check_step_size(self.lr)

    @property
    def transformation(self) -> optax.GradientTransformation:
        """The optax transformation in use (`optimizer`, or `optax.adam(lr)`)."""
        return optax.adam(self.lr) if self.optimizer is None else self.optimizer

    def init(self, model, q):
        return q, self.transformation.init(q.parameters)

    def step(self, model, q, state, batch, step_count, key):
        def loss(parameters):
            return -model.elbo(q.with_parameters(parameters), batch)

        negative_elbo, grads = jax.value_and_grad(loss)(q.parameters)
        updates, state = self.transformation.update(grads, state, q.parameters)
        new_q = q.with_parameters(optax.apply_updates(q.parameters, updates))
        dtype = negative_elbo.dtype
        if self.optimizer is None:
            rho = scheduled = jnp.maximum(step_size_at(self.lr, step_count).astype(dtype), 0.0)
        else:  # the chain's own step size is unknown: measure what it did
            rho, scheduled = (size.astype(dtype) for size in effective_step_size(grads, updates))
        info = StepInfo(-negative_elbo, rho, jnp.asarray(0), new_q.min_precision(), scheduled)
        return new_q, state, info


def effective_step_size(loss_gradient, update) -> tuple[Array, Array]:
    """`(max(-(g . u), 0) / ||g||^2, ||u|| / ||g||)` for the gradient `g` of the loss (`-ELBO`)
    and an optimizer's update `u`. The first is the step size `rho` of the plain gradient step
    `u = -rho g` with the same first-order gain (the chain's step size for SGD; 0 for an update
    that does not descend, e.g. momentum at a turn): `fit` divides ELBO changes by it, so with a
    custom chain its convergence test reads `||g||^2 <= tol (1 + |ELBO|)` to first order,
    whatever the chain's scaling. The second, the "scheduled" step size, vanishes only when the
    chain's updates do (a schedule that decayed to 0: `schedule_ended`), not at a single step
    that does not descend. (A gradient of exactly 0 gives 1 for both: nothing left to move.)"""
    squared = optax.tree.norm(loss_gradient, squared=True)
    safe = jnp.where(squared > 0, squared, 1.0)
    descent = jnp.maximum(-optax.tree.vdot(loss_gradient, update), 0.0) / safe
    length = optax.tree.norm(update) / jnp.sqrt(safe)
    return jnp.where(squared > 0, descent, 1.0), jnp.where(squared > 0, length, 1.0)
