"""Natural-gradient VI with deterministic expectations (conjugate-computation VI)."""

import jax.numpy as jnp

from ..gaussian import damped_natural_update, likelihood_site
from .base import AbstractOptimizer, StepInfo, StepSize, step_size_at


def min_precision_of(q) -> jnp.ndarray:
    """Smallest site precision (GP) or smallest diagonal precision (parametric) of `q`."""
    _, eta2 = q.parameters
    diagonal = eta2 if eta2.ndim == 1 else jnp.diagonal(eta2)
    return jnp.min(-2.0 * diagonal)


class NaturalGradient(AbstractOptimizer):
    """Conjugate-computation VI (Khan & Lin 2017), the natural-gradient step of the ELBO:

        site_target = (E_q[g] - E_q[H] mu,  1/2 E_q[H])
        eta_new     = (1 - lr) eta + lr (eta_prior + site_target)

    with `E_q[g]`, `E_q[H]` of the log-likelihood at the marginals of `q`, by closed form where
    one exists and Gauss-Hermite quadrature otherwise. With `lr = 1` a Gaussian likelihood
    reaches the exact posterior in one step, and log-concave likelihoods converge in a handful.

    **Arguments:**

    - `lr`: step size `rho` in `(0, 1]`, a float or an optax schedule `step -> rho`.
    - `precision_floor`: site precisions are kept `>= precision_floor` (default 0), so a
      non-log-concave likelihood cannot push `W` negative.
    """

    lr: StepSize = 1.0
    precision_floor: float = 0.0

    def init(self, model, q):
        return None

    def step(self, model, q, state, step_count, key):
        mean, variance, kl = model.latent_marginals_and_kl(q)
        expected, grad, hess = model.likelihood.expected_derivatives(model.y, mean, variance)
        elbo = jnp.sum(expected) - kl
        hess = jnp.minimum(hess, -self.precision_floor)
        lam1, lam2 = likelihood_site(mean, grad, hess)
        target = model.natural_target(q, lam1, lam2)
        rho = step_size_at(self.lr, step_count)
        new_q = q.with_parameters(damped_natural_update(q.parameters, target.parameters, rho))
        info = StepInfo(elbo, rho, jnp.asarray(0), min_precision_of(new_q))
        return new_q, state, info
