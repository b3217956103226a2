"""A Gaussian prior over the weights of a parametric (weight-space) model."""

import math

import distrax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._validation import check_finite, is_concrete
from ..families.views import JointView, RowsView
from ..kernels import _as_float_array
from .base import AbstractPrior


def _as_covariance_matrix(covariance: Array, dim: int) -> Array:
    if covariance.ndim == 0:
        return covariance * jnp.eye(dim, dtype=covariance.dtype)
    if covariance.shape == (dim,):
        return jnp.diag(covariance)
    if covariance.shape == (dim, dim):
        return covariance
    raise ValueError(
        f"`covariance` must be a scalar, shape ({dim},) or ({dim}, {dim}) to match `mean` of "
        f"shape ({dim},), got shape {covariance.shape}."
    )


class GaussianPrior(AbstractPrior):
    """A Gaussian prior `w ~ N(mu, Sigma)` over the `D` weights of a parametric model.

    Natural parameters follow the library convention `eta1 = Sigma^-1 mu`,
    `eta2 = -1/2 Sigma^-1`; they are computed from `L = chol(Sigma)` by triangular solves.

    **Arguments:**

    - `mean`: the mean `mu`, shape `(D,)`.
    - `covariance`: `Sigma`, as a scalar `s` (meaning `s * I`), a vector of shape `(D,)` (a
      diagonal), or a full symmetric positive-definite matrix of shape `(D, D)`.
    """

    mean: Float[Array, " D"]
    covariance: Float[Array, "D D"]

    def __init__(self, mean: Float[ArrayLike, " D"], covariance: Float[ArrayLike, "..."]):
        mean, covariance = _as_float_array(mean), _as_float_array(covariance)
        if mean.ndim != 1:
            raise ValueError(f"`mean` must have shape (D,), got shape {mean.shape}.")
        covariance = _as_covariance_matrix(covariance, mean.shape[0])
        if is_concrete((mean, covariance)):
            check_finite(mean, "mean")
            cov = check_finite(covariance, "covariance")
            if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-12):
                raise ValueError("`covariance` is not symmetric.")
            try:
                np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                smallest = np.linalg.eigvalsh(0.5 * (cov + cov.T)).min()
                raise ValueError(
                    f"covariance is not positive definite (smallest eigenvalue {smallest:.3g})."
                ) from None
        self.mean = mean
        self.covariance = covariance

    @property
    def dim(self) -> int:
        """The number of weights `D`."""
        return self.mean.shape[0]

    def cholesky(self) -> Float[Array, "D D"]:
        """Return the lower Cholesky factor `L` with `L L^T = Sigma`."""
        return jnp.linalg.cholesky(self.covariance)

    def precision(self) -> Float[Array, "D D"]:
        """Return `Sigma^-1`, by Cholesky solves against the identity."""
        eye = jnp.eye(self.dim, dtype=self.covariance.dtype)
        precision = jsl.cho_solve((self.cholesky(), True), eye)
        return 0.5 * (precision + precision.T)

    def natural_parameters(self) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
        """Return `(eta1, eta2) = (Sigma^-1 mu, -1/2 Sigma^-1)`."""
        eta1 = jsl.cho_solve((self.cholesky(), True), self.mean)
        return eta1, -0.5 * self.precision()

    def log_prob(self, w: Float[ArrayLike, " D"]) -> Float[Array, ""]:
        """Return `log N(w | mu, Sigma)`.

        Computed as `-1/2 |L^-1 (w - mu)|^2 - sum(log diag L) - D/2 log(2 pi)`, `L = chol(Sigma)`.
        """
        L = self.cholesky()
        z = jsl.solve_triangular(L, jnp.asarray(w) - self.mean, lower=True)
        log_det = jnp.sum(jnp.log(jnp.diag(L)))
        return -0.5 * jnp.sum(z**2) - log_det - 0.5 * self.dim * math.log(2 * math.pi)

    def to_distribution(self) -> distrax.MultivariateNormalTri:
        """Return the prior as a `distrax.MultivariateNormalTri`."""
        return distrax.MultivariateNormalTri(loc=self.mean, scale_tri=self.cholesky())

    def num_coordinates(self, inputs):
        return self.dim

    def whitened_view(self, inputs, at=None):
        at = inputs if at is None else at
        zeros = jnp.zeros(at.shape[0], at.dtype)
        return RowsView(at @ self.mean, at @ self.cholesky(), zeros)

    def latent_coordinates(self, inputs):
        return JointView(self.mean, self.cholesky())
