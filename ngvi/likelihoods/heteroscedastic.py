r"""A Gaussian likelihood whose noise is a second latent function (a chained GP)."""

import distrax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from .multi import AbstractMultiLatentLikelihood, Matrix


class HeteroscedasticGaussian(AbstractMultiLatentLikelihood):
    r"""$y \sim \mathcal N(f_0, e^{f_1})$: the mean and the log noise variance are two latent
    functions (Saul et al. 2016, "chained Gaussian processes").

    With $f_0 \sim \mathcal N(m_0, v_0)$ and $f_1 \sim \mathcal N(m_1, v_1)$ independent the
    expectation is closed-form,

    $$\mathbb{E}_q[\log p] = -\tfrac12 \log 2\pi - \tfrac12 m_1
    - \tfrac12 \big((y - m_0)^2 + v_0\big)\, e^{-m_1 + v_1 / 2},$$

    and both diagonal curvatures are negative ($-e^{-f_1}$ and $-\tfrac12 (y - f_0)^2 e^{-f_1}$),
    so in the default family (independent across the latents) the natural-gradient step is
    exact and keeps the precision positive. The full $2 \times 2$ expected Hessian of the
    coupled family (`Model(..., family="coupled")`) is indefinite wherever $(y - m_0)^2 > v_0$:
    there use `NaturalGradient(psd_correction=True)` (without it every step is rejected and
    `fit` ends as `stalled`, saying so). Give the second
    latent a prior mean near the log of the noise variance you expect
    (`GPPrior(kernel, mean=[0.0, log_noise])`).
    """

    @property
    def num_latent(self) -> int:
        return 2

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        f = jnp.asarray(f)
        mean, log_variance = f[..., 0], f[..., 1]
        return -0.5 * (
            jnp.log(2 * jnp.pi) + log_variance + (y - mean) ** 2 * jnp.exp(-log_variance)
        )

    def expected_log_prob(self, y, mean: Matrix, variance: Matrix) -> Array:
        precision = jnp.exp(-mean[:, 1] + 0.5 * variance[:, 1])
        squares = (y - mean[:, 0]) ** 2 + variance[:, 0]
        return -0.5 * (jnp.log(2 * jnp.pi) + mean[:, 1] + squares * precision)

    def predictive_moments(self, mean: Matrix, variance: Matrix):
        """`E[y] = m_0`, `Var[y] = v_0 + E[e^{f_1}] = v_0 + e^{m_1 + v_1 / 2}` (from the
        diagonal when `variance` is a covariance `(n, 2, 2)` per point: the coupled family)."""
        if variance.ndim == 3:
            variance = jnp.diagonal(variance, axis1=1, axis2=2)
        return mean[:, 0], variance[:, 0] + jnp.exp(mean[:, 1] + 0.5 * variance[:, 1])

    def distribution(self, f: ArrayLike) -> distrax.Distribution:
        f = jnp.asarray(f)
        return distrax.Normal(f[..., 0], jnp.exp(0.5 * f[..., 1]))
