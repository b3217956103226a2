"""The moment family over whitened coordinates that the Euclidean baseline (`Adam`) moves."""

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .whitened_base import AbstractWhitenedVariational


class WhitenedGaussianVariational(AbstractWhitenedVariational):
    """`q(v) = N(m, S S^T)` over the model's whitened coordinates, held by `(m, S)`.

    **Fields:** `mean` `(C, D)` and `scale`: `(C, D, D)` (only the lower triangle is read) for a
    full covariance, or `(C, D)` (`S = diag(scale)`) for the mean field. The parameters are
    unconstrained, which is what makes them a Euclidean baseline:

        KL(q || N(0, I)) = 1/2 [ ||S||_F^2 + ||m||^2 - D ] - sum_i log|S_ii|
    """

    mean: Float[Array, "C D"]
    scale: Array
    diagonal_precision: ClassVar[bool] = True

    @classmethod
    def at_prior(
        cls, num_latent: int, dim: int, dtype, diagonal: bool = False
    ) -> "WhitenedGaussianVariational":
        """`m = 0`, `S = I` (made by numpy: `jnp.eye` and friends compiled five small programs
        on a first fit of each new size)."""
        zeros = np.zeros((num_latent, dim), dtype)
        if diagonal:
            scale = np.ones((num_latent, dim), dtype)
        else:
            scale = np.broadcast_to(np.eye(dim, dtype=dtype), (num_latent, dim, dim))
        return cls(jax.device_put(zeros), jax.device_put(scale))

    @property
    def parameters(self):
        return self.mean, self.scale

    def with_parameters(self, parameters):
        return WhitenedGaussianVariational(*parameters)

    def _is_full(self) -> bool:
        return self.scale.ndim == self.mean.ndim + 1

    def _tril(self) -> Array:
        return jnp.tril(self.scale) if self._is_full() else self.scale

    def _mean(self):
        return self.mean

    def _root_t(self, design_t):
        scale = self._tril()
        if self._is_full():
            return scale.T @ design_t
        return scale[:, None] * design_t

    def _kl(self):
        scale = self._tril()
        diagonal = jnp.diagonal(scale) if self._is_full() else scale
        squares = jnp.sum(scale**2)
        return 0.5 * (squares + self.mean @ self.mean - self.mean.shape[0]) - jnp.sum(
            jnp.log(jnp.abs(diagonal))
        )

    @property
    def precision(self) -> Float[Array, "C D"]:
        """The marginal precisions `1 / (S S^T)_ii` of `v`."""
        scale = self._tril()
        if self._is_full():
            return 1.0 / jnp.sum(scale**2, axis=-1)
        return 1.0 / scale**2

    def precision_is_valid(self):
        scale = self.scale
        diagonal = jnp.diagonal(scale, axis1=-2, axis2=-1) if self._is_full() else scale
        finite = jnp.all(jnp.isfinite(self.mean)) & jnp.all(jnp.isfinite(self.scale))
        return finite & jnp.all(diagonal != 0)
