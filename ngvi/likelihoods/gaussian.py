"""The Gaussian likelihood, with closed-form expectations."""

import distrax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._validation import check_positive
from ..parameters import learnable
from .base import AbstractLikelihood, Vector


class Gaussian(AbstractLikelihood):
    r"""$\log p(y \mid f) = -\tfrac12 \log(2\pi\sigma^2) - (y - f)^2 / (2\sigma^2)$.

    All expectations are closed-form:

    $$\mathbb{E}_q[\log p] = -\tfrac12\log(2\pi\sigma^2) - \frac{(y - m)^2 + v}{2\sigma^2},
    \quad \mathbb{E}_q[g] = \frac{y - m}{\sigma^2}, \quad \mathbb{E}_q[H] = -\frac{1}{\sigma^2}.$$

    The noise variance is stored by its logarithm (learnable), so it is positive by
    construction.
    """

    log_variance: Float[Array, ""] = learnable()

    def __init__(self, variance: ArrayLike = 1.0, *, num_quadrature_points: int = 20):
        check_positive(variance, "variance")
        self.log_variance = jnp.log(jnp.asarray(variance, dtype=float))
        self.num_quadrature_points = num_quadrature_points

    @property
    def variance(self) -> Float[Array, ""]:
        return jnp.exp(self.log_variance)

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        return -0.5 * (jnp.log(2 * jnp.pi) + self.log_variance + (y - f) ** 2 / self.variance)

    def expected_log_prob(self, y: Vector, mean: Vector, variance: Vector) -> Vector:
        return -0.5 * (
            jnp.log(2 * jnp.pi) + self.log_variance + ((y - mean) ** 2 + variance) / self.variance
        )

    def expected_derivatives(
        self, y: Vector, mean: Vector, variance: Vector
    ) -> tuple[Vector, Vector, Vector]:
        hess = jnp.broadcast_to(-1.0 / self.variance, jnp.shape(mean))
        return self.expected_log_prob(y, mean, variance), (y - mean) / self.variance, hess

    def gauss_newton_derivatives(
        self, y: Vector, mean: Vector, variance: Vector
    ) -> tuple[Vector, Vector, Vector]:
        return self.expected_derivatives(y, mean, variance)

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        f = jnp.asarray(f)
        return f, jnp.broadcast_to(self.variance, f.shape)

    def predictive_moments(self, mean: Vector, variance: Vector) -> tuple[Vector, Vector]:
        return mean, variance + self.variance

    def distribution(self, f: ArrayLike) -> distrax.Distribution:
        return distrax.Normal(f, jnp.sqrt(self.variance))
