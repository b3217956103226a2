"""The Euclidean baseline: optax on the whitened mean and Cholesky factor."""

import jax
import jax.numpy as jnp
import optax

from ..models import GPModel, LinearModel
from ..whitened import WhitenedGaussianVariational
from .base import AbstractOptimizer, StepInfo, StepSize, step_size_at


class Adam(AbstractOptimizer):
    """Gradient ascent on the exact ELBO in whitened coordinates, with any optax optimizer.

    The family is `ngvi.WhitenedGaussianVariational`: `v = m0 + L0 u`, `q(u) = N(m, S S^T)`,
    `L0 = chol(K)` for a GP (`v = f(X)`), `L0 = chol(S0)` for a linear model's weights. Each
    step takes the Euclidean gradient of

        ELBO(m, S) = sum_i E_q[log p(y_i | f_i)] - KL(q(u) || N(0, I))

    (Gauss-Hermite quadrature / closed forms, never Monte Carlo) and hands `-ELBO` to optax,
    which minimises. No curvature: this is the baseline that shows what natural gradients buy
    (many more steps, and a step size to tune).

    **Arguments:**

    - `lr`: learning rate of the default `optax.adam(lr)`; a float or an optax schedule.
    - `optimizer`: any `optax.GradientTransformation`, used instead of `optax.adam(lr)`.
      Reuse the same `Adam` instance to reuse its compiled fit loop.

    `StepInfo`: `elbo` is the exact ELBO of the input `q`; `step_size` is `lr` at that step
    (informational when `optimizer` is given); `num_backoffs` is `0`; `min_precision` is the
    smallest marginal precision `1 / (S S^T)_ii` of `u` after the step.

    ```python
    result = ngvi.fit(model, ngvi.Adam(lr=0.05), num_steps=2000)
    ```
    """

    lr: StepSize = 1e-2
    optimizer: optax.GradientTransformation | None = None

    def __check_init__(self):
        if not callable(self.lr) and not float(self.lr) > 0:
            raise ValueError(f"`lr` must be positive, got {self.lr}.")

    @property
    def transformation(self) -> optax.GradientTransformation:
        """The optax transformation in use (`optimizer`, or `optax.adam(lr)`)."""
        return optax.adam(self.lr) if self.optimizer is None else self.optimizer

    def init_variational(self, model):
        if isinstance(model, GPModel):
            prior_mean = model.prior.mean_vector(model.X)
            prior_scale = model.prior_cholesky()
        elif isinstance(model, LinearModel):
            prior_mean, prior_scale = model.prior.mean, model.prior.cholesky()
        else:
            raise TypeError(f"Adam supports GPModel and LinearModel, not {type(model).__name__}.")
        prior_mean = jnp.asarray(prior_mean, model.y.dtype)
        return WhitenedGaussianVariational.at_prior(prior_mean, prior_scale.astype(model.y.dtype))

    def init(self, model, q):
        if not isinstance(q, WhitenedGaussianVariational):
            raise TypeError(
                "Adam moves a WhitenedGaussianVariational; start from "
                f"`Adam().init_variational(model)`, not a {type(q).__name__}."
            )
        return self.transformation.init(q.parameters)

    def step(self, model, q, state, step_count, key):
        def loss(parameters):
            return -model.elbo(q.with_parameters(parameters))

        negative_elbo, grads = jax.value_and_grad(loss)(q.parameters)
        updates, state = self.transformation.update(grads, state, q.parameters)
        new_q = q.with_parameters(optax.apply_updates(q.parameters, updates))
        scale = jnp.tril(new_q.whitened_scale)
        min_precision = 1.0 / jnp.max(jnp.sum(scale**2, axis=1))
        rho = step_size_at(self.lr, step_count).astype(negative_elbo.dtype)
        info = StepInfo(-negative_elbo, rho, jnp.asarray(0), min_precision)
        return new_q, state, info
