"""The mean-field family over whitened coordinates, in natural parameters."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..gaussian import blr_diag_update
from .views import each_latent
from .whitened_base import AbstractWhitenedVariational


class DiagonalGaussianVariational(AbstractWhitenedVariational):
    """Mean field over the whitened coordinates: `q(v) = N(m, diag(s)^-1)`, held as
    `eta1 = s m`, `eta2 = -s / 2` (`(C, D)` each, one per latent function).

        Var[a^T v] = sum_d a_d^2 / s_d,
        KL(q || N(0, I)) = 1/2 [ sum_d 1/s_d + ||m||^2 - D + sum_d log s_d ]

    Its natural-gradient target is the Bayesian learning rule's diagonal step with `lr = 1`
    (`ngvi.blr_diag_update`, prior `N(0, I)`): `s_t = 1 - diag(H_v)`, `m_t = m + (g_v - m) / s_t`,
    with `g_v = sum_b a_b E[g_b]` and `diag(H_v) = sum_b a_b^2 E[H_b]`. A damped step towards it
    is that rule with step size `rho`: the exact natural gradient of the mean-field ELBO, whose
    optimum is below the full-Gaussian one (the mean field drops the posterior correlations).
    """

    eta1: Float[Array, "C D"]
    eta2: Float[Array, "C D"]
    diagonal_precision: ClassVar[bool] = True

    @classmethod
    def at_prior(cls, num_latent: int, dim: int, dtype) -> "DiagonalGaussianVariational":
        """`q(v) = N(0, I)` (made by numpy: `jnp.zeros` and `jnp.full` compile on a first fit)."""
        eta1, eta2 = np.zeros((num_latent, dim), dtype), np.full((num_latent, dim), -0.5, dtype)
        return cls(jax.device_put(eta1), jax.device_put(eta2))

    @property
    def parameters(self):
        return self.eta1, self.eta2

    def with_parameters(self, parameters):
        return DiagonalGaussianVariational(*parameters)

    def _mean(self):
        return self.eta1 / (-2.0 * self.eta2)

    def _root_t(self, design_t):
        return design_t / jnp.sqrt(-2.0 * self.eta2)[:, None]

    def _kl(self):
        s, m = -2.0 * self.eta2, self._mean()
        return 0.5 * (jnp.sum(1.0 / s) + m @ m - m.shape[0] + jnp.sum(jnp.log(s)))

    def target_from_pullback(self, grads, hessians, scale):
        def one(q, grad_v, hess_v):
            s = -2.0 * q.eta2
            zeros, ones = jnp.zeros_like(s), jnp.ones_like(s)
            mean, precision = blr_diag_update(
                q._mean(), s, scale * grad_v, scale * hess_v, zeros, ones, 1.0
            )
            return precision * mean, -0.5 * precision

        return each_latent(one, self, grads, hessians)

    def precision_is_valid(self):
        finite = jnp.all(jnp.isfinite(self.eta1)) & jnp.all(jnp.isfinite(self.eta2))
        return finite & jnp.all(-2.0 * self.eta2 > 0)
