"""The Student-t likelihood for robust regression (not log-concave)."""

import jax.numpy as jnp
from jax.scipy.special import gammaln
from jaxtyping import Array, ArrayLike, Float

from .._validation import check_positive
from ..parameters import learnable
from .base import AbstractLikelihood


class StudentT(AbstractLikelihood):
    r"""Student-t with location $f$, degrees of freedom $\nu$ and scale $s$:

    $$\log p(y \mid f) = \log\frac{\Gamma(\frac{\nu+1}{2})}{\Gamma(\frac{\nu}{2})\sqrt{\nu\pi}\,s}
    \;-\; \frac{\nu+1}{2}\log\Big(1 + \frac{(y - f)^2}{\nu s^2}\Big).$$

    Not log-concave: $H > 0$ where $(y - f)^2 > \nu s^2$ (outliers), which is what the
    optimizers' safeguards and Gauss-Newton are for. Conditional moments
    $(f,\ s^2 \nu / (\nu - 2))$ for $\nu > 2$; for $\nu \le 2$ the variance is infinite, so
    the Gauss-Newton curvature is zero and `ngvi.GaussNewton` refuses the likelihood (fit it
    with `NaturalGradient(psd_correction=True)`, a `precision_floor`, or `BLR`). Both
    parameters are stored by their logarithms.
    """

    log_df: Float[Array, ""] = learnable()
    log_scale: Float[Array, ""] = learnable()

    def __init__(
        self, df: ArrayLike = 4.0, scale: ArrayLike = 1.0, *, num_quadrature_points: int = 20
    ):
        check_positive(df, "df")
        check_positive(scale, "scale")
        self.log_df = jnp.log(jnp.asarray(df, dtype=float))
        self.log_scale = jnp.log(jnp.asarray(scale, dtype=float))
        self.num_quadrature_points = num_quadrature_points

    @property
    def df(self) -> Float[Array, ""]:
        return jnp.exp(self.log_df)

    @property
    def scale(self) -> Float[Array, ""]:
        return jnp.exp(self.log_scale)

    def log_prob(self, f: ArrayLike, y: ArrayLike) -> Array:
        df = self.df
        z2 = (y - f) ** 2 / (df * self.scale**2)
        normaliser = gammaln((df + 1) / 2) - gammaln(df / 2) - 0.5 * jnp.log(df * jnp.pi)
        return normaliser - self.log_scale - 0.5 * (df + 1) * jnp.log1p(z2)

    def conditional_moments(self, f: ArrayLike) -> tuple[Array, Array]:
        f = jnp.asarray(f)
        df = self.df
        var = jnp.where(df > 2, self.scale**2 * df / jnp.where(df > 2, df - 2, 1.0), jnp.inf)
        return f, jnp.broadcast_to(var, f.shape)
