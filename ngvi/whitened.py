"""The whitened Gaussian family that the Euclidean (`Adam`) baseline moves.

The latent is written through the prior's Cholesky factor,

    v = m0 + L0 u,        u ~ q(u) = N(m, S S^T),        p(u) = N(0, I),

with `L0 = chol(K)` for a GP (`v = f(X)`) or `L0 = chol(S0)` for a linear model's weights
(`v = w`, `f = X w`). Since the map `u -> v` is an affine bijection,
`KL(q(v) || p(v)) = KL(q(u) || N(0, I))`, which has the closed form

    KL = 1/2 [ ||S||_F^2 + ||m||^2 - D ] - sum_i log|S_ii|.

The parameters `(m, S)` are unconstrained except that `S` is read as its lower triangle.

`WhitenedDiagonalGaussianVariational` is the mean-field member over the same whitened `u`,
`q(u) = N(m, diag(s)^-1)`, held in natural parameters `(s m, -s / 2)`: the GP seen as a linear
model with design matrix `L0` and prior `N(0, I)` (`ngvi.BLR(family="diagonal")` moves it).
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float

from .variational import GaussianVariational


class AbstractWhitenedVariational(GaussianVariational):
    """A Gaussian over whitened coordinates `u`, `v = m0 + L0 u`, `p(u) = N(0, I)`.

    Models and `ngvi.predict` dispatch on this class: the latent marginals and
    `KL(q(u) || N(0, I))` come from `latent_marginals_and_kl`, GP predictions from
    `predict_latent`.
    """

    prior_mean: eqx.AbstractVar[Float[Array, " D"]]
    prior_scale: eqx.AbstractVar[Float[Array, "D D"]]

    @abc.abstractmethod
    def kl_to_prior(self) -> Float[Array, ""]:
        """`KL(q(u) || N(0, I))`, which equals `KL(q(v) || p(v))`."""

    @abc.abstractmethod
    def projected_marginals(
        self, design: Float[Array, "n D"]
    ) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
        """Marginals of `f = X v`."""

    @abc.abstractmethod
    def predict_latent(
        self,
        cross_covariance: Float[Array, "D m"],
        prior_mean_new: Float[Array, " m"],
        prior_variance_new: Float[Array, " m"],
    ) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
        """GP latent marginals at new inputs."""

    def latent_marginals_and_kl(
        self, design: Float[Array, "n D"] | None = None
    ) -> tuple[Float[Array, " n"], Float[Array, " n"], Float[Array, ""]]:
        """`(E[f_i], Var[f_i], KL)`: `f = v` for a GP (`design=None`), `f = X v` otherwise."""
        if design is None:
            mean, variance = self.marginals()
        else:
            mean, variance = self.projected_marginals(design)
        return mean, variance, self.kl_to_prior()


class WhitenedGaussianVariational(AbstractWhitenedVariational):
    """`q(v) = N(m0 + L0 m, L0 S S^T L0^T)` in whitened coordinates `(m, S)`.

    **Fields:** `prior_mean` (`m0`), `prior_scale` (`L0`, lower triangular), `whitened_mean`
    (`m`) and `whitened_scale` (`S`, only its lower triangle is used). `parameters` are
    `(m, S)`; the family is at the prior when `m = 0`, `S = I`.
    """

    prior_mean: Float[Array, " D"]
    prior_scale: Float[Array, "D D"]
    whitened_mean: Float[Array, " D"]
    whitened_scale: Float[Array, "D D"]

    @classmethod
    def at_prior(
        cls, prior_mean: Float[Array, " D"], prior_scale: Float[Array, "D D"]
    ) -> "WhitenedGaussianVariational":
        """The member equal to the prior: `m = 0`, `S = I`."""
        dim = prior_mean.shape[0]
        return cls(
            prior_mean,
            prior_scale,
            jnp.zeros(dim, prior_mean.dtype),
            jnp.eye(dim, dtype=prior_mean.dtype),
        )

    @property
    def parameters(self):
        return self.whitened_mean, self.whitened_scale

    def with_parameters(self, parameters):
        m, S = parameters
        return WhitenedGaussianVariational(self.prior_mean, self.prior_scale, m, S)

    @property
    def _scale(self) -> Float[Array, "D D"]:
        return jnp.tril(self.whitened_scale)

    @property
    def mean(self):
        return self.prior_mean + self.prior_scale @ self.whitened_mean

    def scale_tril(self):
        # L0 S is lower triangular; flip column signs so that its diagonal is positive.
        factor = self.prior_scale @ self._scale
        return factor * jnp.sign(jnp.diagonal(factor))[None, :]

    @property
    def covariance(self):
        factor = self.prior_scale @ self._scale
        return factor @ factor.T

    def marginals(self):
        factor = self.prior_scale @ self._scale
        return self.mean, jnp.sum(factor**2, axis=1)

    def projected_marginals(
        self, design: Float[Array, "n D"]
    ) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
        """Marginals of `f = X v`: `X mu` and `rowsum((X L0 S)^2)`."""
        factor = design @ (self.prior_scale @ self._scale)
        return design @ self.mean, jnp.sum(factor**2, axis=1)

    def kl_to_prior(self) -> Float[Array, ""]:
        """`KL(q(u) || N(0, I)) = 1/2 [||S||_F^2 + ||m||^2 - D] - sum log|S_ii|`."""
        scale, m = self._scale, self.whitened_mean
        log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(scale))))
        return 0.5 * (jnp.sum(scale**2) + jnp.sum(m**2) - m.shape[0]) - log_det

    def predict_latent(
        self,
        cross_covariance: Float[Array, "D m"],
        prior_mean_new: Float[Array, " m"],
        prior_variance_new: Float[Array, " m"],
    ) -> tuple[Float[Array, " m"], Float[Array, " m"]]:
        """GP latent marginals at new inputs, `A = L0^-1 k*` (one triangular solve):

        E[f*] = m0(x*) + A^T m,        Var[f*] = k** - ||A||^2 + ||S^T A||^2
        """
        whitened = jsl.solve_triangular(self.prior_scale, cross_covariance, lower=True)
        mean = prior_mean_new + whitened.T @ self.whitened_mean
        variance = (
            prior_variance_new
            - jnp.sum(whitened**2, axis=0)
            + jnp.sum((self._scale.T @ whitened) ** 2, axis=0)
        )
        return mean, jnp.maximum(variance, 0.0)


class WhitenedDiagonalGaussianVariational(AbstractWhitenedVariational):
    """Mean-field Gaussian over the whitened `u`: `q(u) = N(m, diag(s)^-1)`, so

        v = m0 + L0 u,        E[v] = m0 + L0 m,        Var[v_i] = sum_d L0_id^2 / s_d,

    held in natural parameters `eta1 = s m`, `eta2 = -s / 2` (both `(D,)`). For a GP this is
    the model `f = m0 + L_K u`, `u ~ N(0, I)`, a linear model with design matrix
    `L_K = chol(K)` (`K` with jitter), under a mean-field posterior over `u`. The KL is

        KL(q(u) || N(0, I)) = 1/2 [ sum_d 1/s_d + ||m||^2 - D + sum_d log s_d ].

    **Fields:** `prior_mean` (`m0`), `prior_scale` (`L0`, lower triangular), `eta1`, `eta2`.
    The family is at the prior when `eta1 = 0`, `eta2 = -1/2`.
    """

    prior_mean: Float[Array, " D"]
    prior_scale: Float[Array, "D D"]
    eta1: Float[Array, " D"]
    eta2: Float[Array, " D"]

    @classmethod
    def at_prior(
        cls, prior_mean: Float[Array, " D"], prior_scale: Float[Array, "D D"]
    ) -> "WhitenedDiagonalGaussianVariational":
        """The member equal to the prior: `m = 0`, `s = 1`."""
        dim = prior_mean.shape[0]
        return cls(
            prior_mean,
            prior_scale,
            jnp.zeros(dim, prior_mean.dtype),
            jnp.full(dim, -0.5, prior_mean.dtype),
        )

    @property
    def parameters(self):
        return self.eta1, self.eta2

    def with_parameters(self, parameters):
        eta1, eta2 = parameters
        return WhitenedDiagonalGaussianVariational(self.prior_mean, self.prior_scale, eta1, eta2)

    @property
    def precision(self) -> Float[Array, " D"]:
        """`s = -2 eta2`, the precisions of the whitened coordinates."""
        return -2.0 * self.eta2

    @property
    def whitened_mean(self) -> Float[Array, " D"]:
        """`m = eta1 / s`."""
        return self.eta1 / self.precision

    @property
    def mean(self):
        return self.prior_mean + self.prior_scale @ self.whitened_mean

    def _factor(self) -> Float[Array, "D D"]:
        # L0 diag(s)^-1/2: lower triangular with positive diagonal when L0's is.
        return self.prior_scale / jnp.sqrt(self.precision)[None, :]

    def scale_tril(self):
        factor = self._factor()
        return factor * jnp.sign(jnp.diagonal(factor))[None, :]

    @property
    def covariance(self):
        factor = self._factor()
        return factor @ factor.T

    def marginals(self):
        return self.mean, (self.prior_scale**2) @ (1.0 / self.precision)

    def projected_marginals(self, design):
        """Marginals of `f = X v`: `X mu` and `sum_d (X L0)_id^2 / s_d`."""
        projected = design @ self.prior_scale
        return design @ self.mean, (projected**2) @ (1.0 / self.precision)

    def kl_to_prior(self) -> Float[Array, ""]:
        """`KL(q(u) || N(0, I)) = 1/2 [sum 1/s + ||m||^2 - D + sum log s]`."""
        s, m = self.precision, self.whitened_mean
        return 0.5 * (jnp.sum(1.0 / s) + jnp.sum(m**2) - m.shape[0] + jnp.sum(jnp.log(s)))

    def predict_latent(self, cross_covariance, prior_mean_new, prior_variance_new):
        """GP latent marginals at new inputs, `A = L0^-1 k*` (one triangular solve):

        E[f*] = m0(x*) + A^T m,        Var[f*] = k** - ||A||^2 + sum_d A_d^2 / s_d
        """
        whitened = jsl.solve_triangular(self.prior_scale, cross_covariance, lower=True)
        mean = prior_mean_new + whitened.T @ self.whitened_mean
        squared = whitened**2
        variance = prior_variance_new - jnp.sum(squared, axis=0) + (1.0 / self.precision) @ squared
        return mean, jnp.maximum(variance, 0.0)
