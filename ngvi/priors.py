"""Gaussian priors: a GP prior over function values and a dense Gaussian over weights.

A prior tells a model how its latent at any inputs depends on *whitened coordinates*
`v ~ N(0, I)` (a `RowsView`, see `ngvi.families.views`):

- `GPPrior`, coordinates at inputs `Z` (the training inputs for a dense model, the inducing
  inputs for a sparse one): `f(Z) = m0 + L v` with `L = chol(K(Z, Z) + jitter I)`, and at other
  inputs `f(x) = m0 + a(x)^T v + e(x)`, `a(x) = L^-1 k(Z, x)`, `Var[e(x)] = k(x, x) - ||a(x)||^2`
  (no jitter there);
- `GaussianPrior` over the weights of `f = x^T w`: `w = m0 + L0 v`, so `f(x) = x^T m0 +
  (L0^T x)^T v` exactly.
"""

import abc
import math
from typing import ClassVar

import distrax
import equinox as eqx
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._validation import check_finite, check_positive, is_concrete
from .families.sites import SitePredictionView, SiteView
from .families.views import RowsView
from .kernels import AbstractKernel, _as_float_array, as_2d_inputs


class AbstractPrior(eqx.Module):
    """What a model needs from its prior (see the module docstring)."""

    has_sites: ClassVar[bool] = False
    """Whether the prior is over the latent at the data points themselves (a dense GP), so
    that the site family applies."""

    @abc.abstractmethod
    def num_coordinates(self, inputs: Float[Array, "n d"]) -> int:
        """The dimension `D` of the whitened coordinates for a model on `inputs`."""

    @abc.abstractmethod
    def whitened_view(
        self, inputs: Float[Array, "n d"], at: Float[Array, "m d"] | None = None
    ) -> RowsView:
        """The latent at `at` (default: at `inputs` themselves) in whitened coordinates."""

    @abc.abstractmethod
    def latent_coordinates(
        self, inputs: Float[Array, "n d"]
    ) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
        """`(o, L)` such that the model's natural coordinates are `o + L v`."""

    def site_view(self, inputs: Float[Array, "n d"]) -> SiteView:
        raise TypeError(
            f"A {type(self).__name__} has no latent per data point, so the site family does "
            "not apply; use the model's own `init_variational()`."
        )

    def site_prediction_view(self, inputs, X_new) -> SitePredictionView:
        return self.site_view(inputs)


class GPPrior(AbstractPrior):
    """A Gaussian-process prior `f ~ GP(m0, k)` with a constant mean `m0`.

    At inputs `X` the prior is `f(X) ~ N(m0 * 1, K(X, X) + jitter * I)`; the jitter keeps the
    covariance numerically positive definite.

    **Arguments:**

    - `kernel`: the covariance function `k`.
    - `mean`: the constant prior mean `m0` (default `0.0`).
    - `jitter`: a positive diagonal term added by [`covariance`][ngvi.priors.GPPrior.covariance]
      (default `1e-6`).
    """

    kernel: AbstractKernel
    mean: Float[Array, ""]
    jitter: float = eqx.field(static=True)
    has_sites: ClassVar[bool] = True

    def __init__(self, kernel: AbstractKernel, mean: ArrayLike = 0.0, jitter: float = 1e-6):
        if not isinstance(kernel, AbstractKernel):
            raise ValueError(f"`kernel` must be an AbstractKernel, got {type(kernel).__name__}.")
        if is_concrete(mean):
            check_finite(mean, "mean")
        check_positive(jitter, "jitter")
        mean = _as_float_array(mean)
        if mean.ndim != 0:
            raise ValueError(f"`mean` must be a scalar, got shape {mean.shape}.")
        self.kernel = kernel
        self.mean = mean
        self.jitter = float(jitter)

    def mean_vector(self, X: Float[ArrayLike, "n ..."]) -> Float[Array, " n"]:
        """Return the prior mean `m0 * 1` at the `n` inputs `X`."""
        X = as_2d_inputs(X)
        return jnp.full((X.shape[0],), self.mean, dtype=jnp.result_type(self.mean, X))

    def covariance(self, X: Float[ArrayLike, "n ..."]) -> Float[Array, "n n"]:
        """Return `K(X, X) + jitter * I`."""
        K = self.kernel(X, X)
        return K + self.jitter * jnp.eye(K.shape[0], dtype=K.dtype)

    def cross_covariance(
        self, X1: Float[ArrayLike, "n ..."], X2: Float[ArrayLike, "m ..."]
    ) -> Float[Array, "n m"]:
        """Return `K(X1, X2)`, without jitter."""
        return self.kernel(X1, X2)

    def variance(self, X: Float[ArrayLike, "n ..."]) -> Float[Array, " n"]:
        """Return the prior marginal variances `k(x_i, x_i)`, without jitter."""
        return self.kernel.diagonal(X)

    def num_coordinates(self, inputs):
        return inputs.shape[0]

    def whitened_view(self, inputs, at=None):
        factor = jnp.linalg.cholesky(self.covariance(inputs))
        if at is None:
            zeros = jnp.zeros(inputs.shape[0], factor.dtype)
            return RowsView(self.mean_vector(inputs), factor, zeros)
        return self.conditional_view(inputs, factor, at)

    def conditional_view(self, inputs, factor, at) -> RowsView:
        """The view at `at` given `factor = chol(K(inputs, inputs) + jitter I)`:
        `a(x) = factor^-1 k(inputs, x)`, `c(x) = k(x, x) - ||a(x)||^2` (no jitter)."""
        design = jsl.solve_triangular(factor, self.cross_covariance(inputs, at), lower=True).T
        conditional = self.variance(at) - jnp.sum(design**2, axis=1)
        return RowsView(self.mean_vector(at), design, jnp.maximum(conditional, 0.0))

    def latent_coordinates(self, inputs):
        return self.mean_vector(inputs), jnp.linalg.cholesky(self.covariance(inputs))

    def site_view(self, inputs):
        return SiteView(self.mean_vector(inputs), self.covariance(inputs))

    def site_prediction_view(self, inputs, X_new):
        return SitePredictionView(
            self.cross_covariance(inputs, X_new), self.mean_vector(X_new), self.variance(X_new)
        )


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
        return self.mean, self.cholesky()
