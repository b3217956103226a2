"""The full-covariance family over whitened coordinates, in natural parameters."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Float

from .._linalg import lower_inverse
from ..gaussian import likelihood_site
from .views import each_latent
from .whitened_base import AbstractWhitenedVariational


class DenseGaussianVariational(AbstractWhitenedVariational):
    """`q(v) = N(mu, Lambda^-1)` with natural parameters `eta1 = Lambda mu`,
    `eta2 = -1/2 Lambda`, one per latent function (`(C, D)` and `(C, D, D)`), over the model's
    whitened coordinates `v ~ N(0, I)`.

    Everything goes through `L = chol(Lambda)` and triangular solves:

        mu = L^-T L^-1 eta1,    Var[a^T v] = ||L^-1 a||^2,
        KL(q || N(0, I)) = 1/2 [ ||L^-1||_F^2 + ||mu||^2 - D ] + sum_i log L_ii

    The natural-gradient target for a view `f_b = o_b + a_b^T v` is the prior `(0, -I/2)` plus
    the site `(g_v - H_v mu, H_v / 2)` in `v` (`ngvi.likelihood_site`), with
    `g_v = sum_b a_b E[g_b]` and `H_v = sum_b a_b E[H_b] a_b^T` (scaled by `N / B`).
    """

    eta1: Float[Array, "C D"]
    eta2: Float[Array, "C D D"]
    diagonal_precision: ClassVar[bool] = False

    @classmethod
    def at_prior(cls, num_latent: int, dim: int, dtype) -> "DenseGaussianVariational":
        """`q(v) = N(0, I)` (made by numpy: `jnp.eye` and friends compile on a first fit)."""
        eye = np.broadcast_to(np.eye(dim, dtype=dtype), (num_latent, dim, dim))
        return cls(jax.device_put(np.zeros((num_latent, dim), dtype)), jax.device_put(-0.5 * eye))

    @property
    def parameters(self):
        return self.eta1, self.eta2

    def with_parameters(self, parameters):
        eta1, eta2 = parameters
        return DenseGaussianVariational(eta1, 0.5 * (eta2 + jnp.swapaxes(eta2, -1, -2)))

    def _factor(self) -> Float[Array, "D D"]:
        return jnp.linalg.cholesky(-2.0 * self.eta2)

    def _mean(self):
        return jsl.cho_solve((self._factor(), True), self.eta1)

    def _root_t(self, design_t):
        """`L^-1 A^T` as a matrix product with `L^-1` (see `ngvi.priors.GPPrior.conditional_view`
        for why not a triangular solve against the `D x B` block)."""
        return lower_inverse(self._factor()) @ design_t

    def _kl(self):
        factor = self._factor()
        inverse = jsl.solve_triangular(
            factor, jnp.eye(factor.shape[0], dtype=factor.dtype), lower=True
        )
        mean = jsl.cho_solve((factor, True), self.eta1)
        dim = mean.shape[0]
        log_det = jnp.sum(jnp.log(jnp.diagonal(factor)))
        return 0.5 * (jnp.sum(inverse**2) + mean @ mean - dim) + log_det

    def target_from_pullback(self, grads, hessians, scale):
        def one(q, grad_v, hess_v):
            lam1, lam2 = likelihood_site(q._mean(), scale * grad_v, scale * hess_v)
            eye = jnp.eye(lam1.shape[0], dtype=lam1.dtype)
            return lam1, lam2 - 0.5 * eye

        return each_latent(one, self, grads, hessians)

    def precision_is_valid(self):
        precision = self.precision
        finite = jnp.all(jnp.isfinite(self.eta1)) & jnp.all(jnp.isfinite(precision))
        eye = jnp.eye(precision.shape[-1], dtype=precision.dtype)
        safe = jnp.where(finite, precision, eye)
        diagonal = jnp.diagonal(each_latent(jnp.linalg.cholesky, safe), axis1=-2, axis2=-1)
        return finite & jnp.all(jnp.isfinite(diagonal)) & jnp.all(diagonal > 0)
