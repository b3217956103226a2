"""Covariance kernels for Gaussian-process priors.

A kernel implements `evaluate(x1, x2)` for one pair of points; the base class builds Gram
matrices by vmapping it. Stationary kernels hold their hyperparameters on the log scale, so
they are positive by construction and can be optimised without constraints, and build their
Gram matrices from `squared_distances`, whose derivative is two matrix products (not an
`(n, m, d)` array).
"""

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._validation import check_positive
from .parameters import learnable


def as_2d_inputs(X: Float[ArrayLike, "n ..."]) -> Float[Array, "n d"]:
    """Return inputs as an `(n, d)` array; a vector of shape `(n,)` becomes `(n, 1)`."""
    X = jnp.asarray(X)
    if X.ndim == 1:
        return X[:, None]
    if X.ndim != 2:
        raise ValueError(f"`X` must have shape (n,) or (n, d), got shape {X.shape}.")
    return X


def _as_float_array(value: ArrayLike) -> Array:
    """`value` as a JAX array, keeping a floating dtype and otherwise using the default float."""
    array = jnp.asarray(value)
    if jnp.issubdtype(array.dtype, jnp.floating):
        return array
    return array.astype(jnp.result_type(float))


def _paired_inputs(X1: ArrayLike, X2: ArrayLike) -> tuple[Array, Array]:
    X1, X2 = as_2d_inputs(X1), as_2d_inputs(X2)
    if X1.shape[1] != X2.shape[1]:
        raise ValueError(
            f"`X1` and `X2` must have the same input dimension, got {X1.shape} and {X2.shape}."
        )
    return X1, X2


def squared_distances(
    A: Float[Array, "n d"], B: Float[Array, "m d"], scale: Float[ArrayLike, "*d"] = 1.0
) -> Float[Array, "n m"]:
    r"""`r2[i, j] = sum_d ((A[i, d] - B[j, d]) scale[d])^2`, from the differences themselves:
    exactly 0 for equal rows and never negative (unlike `|a|^2 + |b|^2 - 2 a.b`). The inputs
    are subtracted before they are scaled, so that equal rows stay exactly 0 under `jit` too
    (XLA contracts `x s - y s` into a fused multiply-add, whose result for `x = y` is the
    rounding error of `x s`, ~1e-32, not 0; a Matérn kernel's `sqrt` then differentiated it).

    Its derivative, `dr2[i, j] = 2 <U_i - V_j, dU_i - dV_j>` with `U = (A - c) scale`,
    `V = (B - c) scale` for any shift `c`, is expanded into row sums and two matrix products,

    $$
    dr2 = 2\left(\mathrm{rowsum}(U \odot dU)\,1^\top + 1\,\mathrm{rowsum}(V \odot dV)^\top
          - U\,dV^\top - dU\,V^\top\right),
    $$

    so reverse mode costs `O(n m d)` flops in two GEMMs instead of reducing an `(n, m, d)`
    array over its first two axes (20x slower for an ARD kernel's lengthscale gradient at
    n = 280, d = 34). The expansion's rounding is absolute, `eps (|U_i|^2 + |V_j|^2)`, so `c`
    is the inputs' mean: inputs far from the origin (timestamps, years) lose nothing to their
    offset (at an offset of 1e8 an uncentred expansion got a lengthscale gradient of -76
    against -5.19). Where `r2` is exactly 0 the derivative is exactly 0, as it is for equal
    rows, whatever the expansion's rounding.
    """
    scale = jnp.broadcast_to(jnp.asarray(scale, jnp.result_type(A, B)), A.shape[-1:])
    return _scaled_squared_distances(A, B, scale)


@jax.custom_jvp
def _scaled_squared_distances(A, B, scale):
    return jnp.sum(((A[:, None, :] - B[None, :, :]) * scale[None, None, :]) ** 2, axis=-1)


@_scaled_squared_distances.defjvp
def _scaled_squared_distances_jvp(primals, tangents):
    (A, B, scale), (dA, dB, dscale) = primals, tangents
    r2 = _scaled_squared_distances(A, B, scale)
    shift = jax.lax.stop_gradient(jnp.mean(jnp.concatenate([A, B]), axis=0))
    shift, scale, dscale = shift[None, :], scale[None, :], dscale[None, :]
    U, V = (A - shift) * scale, (B - shift) * scale
    dU, dV = dA * scale + (A - shift) * dscale, dB * scale + (B - shift) * dscale
    own = jnp.sum(U * dU, axis=-1)[:, None] + jnp.sum(V * dV, axis=-1)[None, :]
    dr2 = 2.0 * (own - U @ dV.T - dU @ V.T)
    return r2, jnp.where(r2 == 0.0, 0.0, dr2)


def _safe_sqrt(r2: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """`sqrt(r2)` with a zero (not NaN/inf) gradient at `r2 = 0` (the double-`where` trick)."""
    positive = r2 > 0
    r = jnp.sqrt(jnp.where(positive, r2, 1.0))
    return jnp.where(positive, r, 0.0)


class AbstractKernel(eqx.Module):
    """A positive-definite covariance function `k(x1, x2)`.

    Subclasses implement [`evaluate`][ngvi.kernels.AbstractKernel.evaluate] for a single pair of
    points; Gram matrices and diagonals follow. Kernels combine with `+` and `*`.
    """

    @abc.abstractmethod
    def evaluate(self, x1: Float[Array, " d"], x2: Float[Array, " d"]) -> Float[Array, ""]:
        """Return `k(x1, x2)` for two single points of dimension `d`."""

    def __call__(
        self, X1: Float[ArrayLike, "n ..."], X2: Float[ArrayLike, "m ..."]
    ) -> Float[Array, "n m"]:
        """Return the Gram matrix `K[i, j] = k(X1[i], X2[j])`.

        Inputs of shape `(n,)` are read as `(n, 1)`.
        """
        X1, X2 = _paired_inputs(X1, X2)
        row = jax.vmap(self.evaluate, in_axes=(None, 0))
        return jax.vmap(row, in_axes=(0, None))(X1, X2)

    def diagonal(self, X: Float[ArrayLike, "n ..."]) -> Float[Array, " n"]:
        """Return `k(X[i], X[i])` for every row, without forming the Gram matrix."""
        return jax.vmap(lambda x: self.evaluate(x, x))(as_2d_inputs(X))

    def __add__(self, other: "AbstractKernel") -> "SumKernel":
        if not isinstance(other, AbstractKernel):
            return NotImplemented
        return SumKernel(self, other)

    def __mul__(self, other: "AbstractKernel") -> "ProductKernel":
        if not isinstance(other, AbstractKernel):
            return NotImplemented
        return ProductKernel(self, other)


class SumKernel(AbstractKernel):
    """The sum `k(x1, x2) = k_1(x1, x2) + k_2(x1, x2)` of two kernels."""

    first: AbstractKernel
    second: AbstractKernel

    def evaluate(self, x1: Float[Array, " d"], x2: Float[Array, " d"]) -> Float[Array, ""]:
        return self.first.evaluate(x1, x2) + self.second.evaluate(x1, x2)

    def __call__(
        self, X1: Float[ArrayLike, "n ..."], X2: Float[ArrayLike, "m ..."]
    ) -> Float[Array, "n m"]:
        return self.first(X1, X2) + self.second(X1, X2)


class ProductKernel(AbstractKernel):
    """The product `k(x1, x2) = k_1(x1, x2) k_2(x1, x2)` of two kernels."""

    first: AbstractKernel
    second: AbstractKernel

    def evaluate(self, x1: Float[Array, " d"], x2: Float[Array, " d"]) -> Float[Array, ""]:
        return self.first.evaluate(x1, x2) * self.second.evaluate(x1, x2)

    def __call__(
        self, X1: Float[ArrayLike, "n ..."], X2: Float[ArrayLike, "m ..."]
    ) -> Float[Array, "n m"]:
        return self.first(X1, X2) * self.second(X1, X2)


class AbstractStationaryKernel(AbstractKernel):
    """A stationary kernel `k(x1, x2) = sigma^2 * kappa(r^2)` of the scaled squared distance

    `r^2 = sum_i ((x1_i - x2_i) / ell_i)^2`.

    **Arguments:**

    - `variance`: the signal variance `sigma^2 > 0`.
    - `lengthscale`: `ell > 0`, a scalar or one per input dimension (shape `(d,)`).

    Both are stored as logarithms (`log_variance`, `log_lengthscale`, marked `learnable`), so
    any real value of the stored parameters gives a valid kernel.
    """

    log_variance: Float[Array, ""] = learnable()
    log_lengthscale: Float[Array, "*d"] = learnable()

    def __init__(self, variance: ArrayLike = 1.0, lengthscale: ArrayLike = 1.0):
        check_positive(variance, "variance")
        check_positive(lengthscale, "lengthscale")
        variance, lengthscale = _as_float_array(variance), _as_float_array(lengthscale)
        if variance.ndim != 0:
            raise ValueError(f"`variance` must be a scalar, got shape {variance.shape}.")
        if lengthscale.ndim > 1:
            raise ValueError(
                f"`lengthscale` must be a scalar or a vector, got shape {lengthscale.shape}."
            )
        self.log_variance = jnp.log(variance)
        self.log_lengthscale = jnp.log(lengthscale)

    @property
    def variance(self) -> Float[Array, ""]:
        """The signal variance `sigma^2 = exp(log_variance)`."""
        return jnp.exp(self.log_variance)

    @property
    def lengthscale(self) -> Float[Array, "*d"]:
        """The lengthscale(s) `ell = exp(log_lengthscale)`."""
        return jnp.exp(self.log_lengthscale)

    @property
    def _inverse_lengthscale(self) -> Float[Array, "*d"]:
        """`1 / ell = exp(-log_lengthscale)`: a lengthscale too long for floating point (a
        feature switched off) then scales its inputs by 0 with derivative 0, where
        `x / exp(log_lengthscale)` gave `x / inf` and a NaN derivative `-x inf / inf^2`."""
        return jnp.exp(-self.log_lengthscale)

    @abc.abstractmethod
    def profile(self, r2: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        """Return `kappa(r^2)`, the kernel as a function of the scaled squared distance,
        elementwise: `r2` is a scalar in `evaluate` and the `(n, m)` array of all pairs when
        the Gram matrix is built, so write it with array operations (`jnp.where`, not
        Python `if` or `lax.cond`)."""

    def _check_dimension(self, d: int) -> None:
        if self.log_lengthscale.ndim == 1 and self.log_lengthscale.shape[0] != d:
            raise ValueError(
                f"The kernel has {self.log_lengthscale.shape[0]} lengthscales but the inputs "
                f"have {d} dimension(s): give one lengthscale per input dimension, or a scalar."
            )

    def evaluate(self, x1: Float[Array, " d"], x2: Float[Array, " d"]) -> Float[Array, ""]:
        self._check_dimension(x1.shape[-1])
        scaled = (x1 - x2) * self._inverse_lengthscale
        return self.variance * self.profile(jnp.sum(scaled**2))

    def __call__(
        self, X1: Float[ArrayLike, "n ..."], X2: Float[ArrayLike, "m ..."]
    ) -> Float[Array, "n m"]:
        """The Gram matrix `sigma^2 kappa(r^2)` with `r^2` from `squared_distances` of the
        inputs, their differences divided by the lengthscales."""
        X1, X2 = _paired_inputs(X1, X2)
        self._check_dimension(X1.shape[1])
        inverse = jnp.broadcast_to(self._inverse_lengthscale, X1.shape[1:])
        return self.variance * self.profile(squared_distances(X1, X2, inverse))


class SquaredExponential(AbstractStationaryKernel):
    """The squared-exponential (RBF) kernel `k(x1, x2) = sigma^2 exp(-r^2 / 2)`."""

    def profile(self, r2: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return jnp.exp(-0.5 * r2)


class Matern12(AbstractStationaryKernel):
    """The Matérn-1/2 (exponential) kernel `k(x1, x2) = sigma^2 exp(-r)`, `r = sqrt(r^2)`."""

    def profile(self, r2: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        return jnp.exp(-_safe_sqrt(r2))


class Matern32(AbstractStationaryKernel):
    """The Matérn-3/2 kernel `k(x1, x2) = sigma^2 (1 + sqrt(3) r) exp(-sqrt(3) r)`."""

    def profile(self, r2: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        s = math.sqrt(3.0) * _safe_sqrt(r2)
        return (1.0 + s) * jnp.exp(-s)


class Matern52(AbstractStationaryKernel):
    """The Matérn-5/2 kernel `k(x1, x2) = sigma^2 (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)`."""

    def profile(self, r2: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
        s = math.sqrt(5.0) * _safe_sqrt(r2)
        return (1.0 + s + s**2 / 3.0) * jnp.exp(-s)
