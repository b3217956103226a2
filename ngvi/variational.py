"""The Gaussian variational family, held in natural parameters.

Three concrete forms share one interface (`GaussianVariational`):

- `SiteGaussianVariational`: a GP posterior as prior plus diagonal likelihood sites,
  `eta = eta_prior + (lam1, diag(lam2))`, evaluated through `B = I + W^1/2 K W^1/2` so that
  `K^-1` is never formed (DESIGN section 3).
- `DenseGaussianVariational`: full natural parameters `(eta1, eta2)` for parametric models.
- `DiagonalGaussianVariational`: mean-field natural parameters `(eta1, diag(eta2))`.

Each exposes `parameters`, the natural parameters an optimizer moves, and
`with_parameters(...)` to rebuild the family from new ones.
"""

import abc
from typing import NamedTuple

import distrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, PRNGKeyArray

from .gaussian import gaussian_entropy, gaussian_kl


class GaussianVariational(eqx.Module):
    """A Gaussian `q = N(mu, Sigma)` held in natural parameters
    `eta1 = Sigma^-1 mu`, `eta2 = -1/2 Sigma^-1`."""

    @property
    @abc.abstractmethod
    def parameters(self) -> tuple[Array, Array]:
        """The natural parameters an optimizer moves (a pair of arrays)."""

    @abc.abstractmethod
    def with_parameters(self, parameters: tuple[Array, Array]) -> "GaussianVariational":
        """The same family with new natural parameters."""

    @property
    @abc.abstractmethod
    def mean(self) -> Float[Array, " D"]:
        """`mu`."""

    @property
    @abc.abstractmethod
    def covariance(self) -> Float[Array, "D D"]:
        """`Sigma` (dense; prefer `marginals()` when only the diagonal is needed)."""

    @abc.abstractmethod
    def marginals(self) -> tuple[Float[Array, " D"], Float[Array, " D"]]:
        """Marginal means and variances `(mu_i, Sigma_ii)`."""

    @abc.abstractmethod
    def scale_tril(self) -> Float[Array, "D D"]:
        """A lower Cholesky factor of `Sigma`."""

    def sample(self, key: PRNGKeyArray, num_samples: int) -> Float[Array, "S D"]:
        """`num_samples` draws `mu + S eps`, `S S^T = Sigma`."""
        mean = self.mean
        noise = jax.random.normal(key, (num_samples, mean.shape[0]), dtype=mean.dtype)
        return mean + noise @ self.scale_tril().T

    def entropy(self) -> Float[Array, ""]:
        """`H[q] = 1/2 log|2 pi e Sigma|`."""
        return gaussian_entropy(self.scale_tril())

    def to_distribution(self) -> distrax.MultivariateNormalTri:
        """`q` as a `distrax.MultivariateNormalTri`."""
        return distrax.MultivariateNormalTri(self.mean, self.scale_tril())


def _precision_cholesky(eta2: Float[Array, "D D"]) -> Float[Array, "D D"]:
    return jnp.linalg.cholesky(-2.0 * eta2)


class DenseGaussianVariational(GaussianVariational):
    """Full-covariance Gaussian over `D` parameters in natural parameters `(eta1, eta2)`."""

    eta1: Float[Array, " D"]
    eta2: Float[Array, "D D"]

    @property
    def parameters(self):
        return self.eta1, self.eta2

    def with_parameters(self, parameters):
        eta1, eta2 = parameters
        return DenseGaussianVariational(eta1, 0.5 * (eta2 + eta2.T))

    @property
    def precision(self) -> Float[Array, "D D"]:
        """`Lambda = -2 eta2`."""
        return -2.0 * self.eta2

    @property
    def mean(self):
        return jsl.cho_solve((_precision_cholesky(self.eta2), True), self.eta1)

    @property
    def covariance(self):
        identity = jnp.eye(self.eta1.shape[0], dtype=self.eta1.dtype)
        return jsl.cho_solve((_precision_cholesky(self.eta2), True), identity)

    def marginals(self):
        factor = _precision_cholesky(self.eta2)
        inverse_factor = jsl.solve_triangular(
            factor, jnp.eye(factor.shape[0], dtype=factor.dtype), lower=True
        )
        return jsl.cho_solve((factor, True), self.eta1), jnp.sum(inverse_factor**2, axis=0)

    def scale_tril(self):
        # Sigma = Lambda^-1 = L^-T L^-1; the QR-free lower factor is chol of that product.
        return jnp.linalg.cholesky(self.covariance)

    def projected_marginals(
        self, design: Float[Array, "n D"]
    ) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
        """Marginals of `f = X w`: `X mu` and `diag(X Sigma X^T) = ||L^-1 x_i||^2`."""
        factor = _precision_cholesky(self.eta2)
        mean = jsl.cho_solve((factor, True), self.eta1)
        whitened = jsl.solve_triangular(factor, design.T, lower=True)
        return design @ mean, jnp.sum(whitened**2, axis=0)


class DiagonalGaussianVariational(GaussianVariational):
    """Mean-field Gaussian: `eta1 = mu / sigma^2`, `eta2 = -1 / (2 sigma^2)`, both `(D,)`."""

    eta1: Float[Array, " D"]
    eta2: Float[Array, " D"]

    @property
    def parameters(self):
        return self.eta1, self.eta2

    def with_parameters(self, parameters):
        return DiagonalGaussianVariational(*parameters)

    @property
    def precision(self) -> Float[Array, " D"]:
        """Diagonal of `Lambda = -2 eta2`."""
        return -2.0 * self.eta2

    @property
    def mean(self):
        return self.eta1 / self.precision

    @property
    def covariance(self):
        return jnp.diag(1.0 / self.precision)

    def marginals(self):
        return self.mean, 1.0 / self.precision

    def scale_tril(self):
        return jnp.diag(jnp.sqrt(1.0 / self.precision))

    def projected_marginals(self, design: Float[Array, "n D"]):
        """Marginals of `f = X w`: `X mu` and `sum_d X_id^2 sigma_d^2`."""
        return design @ self.mean, (design**2) @ (1.0 / self.precision)


class SiteFactors(NamedTuple):
    """Everything one Cholesky of `B = I + W^1/2 K W^1/2` gives about a site posterior."""

    cholesky_b: Array  # L, lower factor of B
    sqrt_w: Array  # W^1/2
    weights: Array  # a, with mu = m0 + K a
    mean: Array  # mu_i
    variance: Array  # Sigma_ii
    kl: Array  # KL(q || p)


_INVERSE_LEAF = 128


def _lower_inverse(factor: Float[Array, "n n"]) -> Float[Array, "n n"]:
    """`L^-1` for lower-triangular `L` by recursive 2 x 2 blocking (Du Croz & Higham 1992):

        [[A, 0], [M, D]]^-1 = [[A^-1, 0], [-D^-1 M A^-1, D^-1]]

    All `O(n^3)` work is in matrix products; blocks of at most `_INVERSE_LEAF` rows use a
    triangular solve against the identity.
    """
    n = factor.shape[0]
    if n <= _INVERSE_LEAF:
        return jsl.solve_triangular(factor, jnp.eye(n, dtype=factor.dtype), lower=True)
    half = n // 2
    upper = _lower_inverse(factor[:half, :half])
    lower = _lower_inverse(factor[half:, half:])
    corner = -(lower @ (factor[half:, :half] @ upper))
    zeros = jnp.zeros((half, n - half), factor.dtype)
    return jnp.block([[upper, zeros], [corner, lower]])


def _strict_column_sq_norms_of_inverse(factor: Float[Array, "n n"]) -> Float[Array, " n"]:
    """`sum_{k > i} (L^-1)_ki^2` for each column `i`.

    The reduction reads the assembled inverse: reducing the squares of a matrix product
    directly lets XLA on CPU fuse the reduction into the product and fall off its fast
    matrix-multiply path (measured 30x slower at `n = 4000`).
    """
    return jnp.sum(jnp.tril(_lower_inverse(factor), -1) ** 2, axis=0)


class SiteGaussianVariational(GaussianVariational):
    """GP posterior in prior-plus-sites form (Rasmussen & Williams, sec. 3.4):

        eta1 = K^-1 m0 + lam1,        eta2 = -1/2 K^-1 + diag(lam2),    W = -2 lam2 >= 0

    With `B = I + W^1/2 K W^1/2 = L L^T` (eigenvalues >= 1, so the Cholesky is always safe):

        Sigma = K - V^T V,    V = L^-1 W^1/2 K
        mu    = m0 + K a,     a = lam1 - W^1/2 B^-1 W^1/2 (m0 + K lam1)
        KL    = 1/2 [ a^T K a - sum_i W_i Sigma_ii ] + sum_i log L_ii

    `K^-1` is never formed. Sites must have `lam2 <= 0`; the optimizers keep it so.
    """

    prior_mean: Float[Array, " n"]
    prior_covariance: Float[Array, "n n"]
    lam1: Float[Array, " n"]
    lam2: Float[Array, " n"]

    @property
    def parameters(self):
        return self.lam1, self.lam2

    def with_parameters(self, parameters):
        lam1, lam2 = parameters
        return SiteGaussianVariational(self.prior_mean, self.prior_covariance, lam1, lam2)

    @property
    def site_precision(self) -> Float[Array, " n"]:
        """`W = -2 lam2`, the sites' precisions."""
        return -2.0 * self.lam2

    def factorise(self) -> SiteFactors:
        """Marginals and KL from one Cholesky of `B` and the inverse of its factor.

        With `L = chol(B)`, `C = L^-1` and `W^1/2 Sigma W^1/2 = I - B^-1`, `B^-1 = C^T C`:

            W_i Sigma_ii = 1 - sum_k C_ki^2 = d_i / (1 + d_i) - sum_{k > i} C_ki^2,
            d_i = L_ii^2 - 1 = W_i K_ii - sum_{j < i} L_ij^2.

        Every term on the right is proportional to `W_i` (row and column `i` of `B - I` carry
        a factor `W_i^1/2`), and none is formed by subtracting from 1, so dividing by `W_i`
        keeps full relative accuracy for tiny `W_i`. `W` is floored at `finfo.tiny^(1/4)`
        (1e-77 in float64, 3e-10 in float32: it moves `Sigma` by that much relative to `K`,
        below rounding) so that `W_i = 0` needs no special case, and so that products of
        up to three sites' factors in the inverse stay normal numbers (subnormal arithmetic
        made a step at `W = 0` about 30x slower on CPU).

        Cost: one Cholesky of `B`, the triangular inverse `C` by recursive blocking (matrix
        products, about a third of the flops of the `N x N`-right-hand-side solve
        `L^-1 W^1/2 K`), and `O(N^2)`; see `benchmarks/README.md`.
        """
        kernel, prior_mean = self.prior_covariance, self.prior_mean
        dtype = kernel.dtype
        site_precision = jnp.maximum(self.site_precision, jnp.finfo(dtype).tiny ** 0.25)
        sqrt_w = jnp.sqrt(site_precision)
        scaled = sqrt_w[:, None] * kernel * sqrt_w[None, :]
        cholesky_b = jnp.linalg.cholesky(jnp.eye(kernel.shape[0], dtype=dtype) + scaled)
        rhs = sqrt_w * (prior_mean + kernel @ self.lam1)
        weights = self.lam1 - sqrt_w * jsl.cho_solve((cholesky_b, True), rhs)
        projected = kernel @ weights
        below = jnp.sum(jnp.tril(cholesky_b, -1) ** 2, axis=1)
        excess = site_precision * jnp.diagonal(kernel) - below  # d_i = L_ii^2 - 1
        scaled_variance = excess / (1.0 + excess) - _strict_column_sq_norms_of_inverse(cholesky_b)
        variance = jnp.maximum(scaled_variance / site_precision, 0.0)
        half_log_det_b = jnp.sum(jnp.log(jnp.diagonal(cholesky_b)))
        kl = 0.5 * (weights @ projected - jnp.sum(scaled_variance)) + half_log_det_b
        return SiteFactors(cholesky_b, sqrt_w, weights, prior_mean + projected, variance, kl)

    @property
    def mean(self):
        return self.factorise().mean

    @property
    def covariance(self):
        factors = self.factorise()
        v = jsl.solve_triangular(
            factors.cholesky_b, factors.sqrt_w[:, None] * self.prior_covariance, lower=True
        )
        covariance = self.prior_covariance - v.T @ v
        return 0.5 * (covariance + covariance.T)

    def marginals(self):
        factors = self.factorise()
        return factors.mean, factors.variance

    def kl_to_prior(self) -> Float[Array, ""]:
        """`KL(q || p)` against the GP prior this posterior was built on."""
        return self.factorise().kl

    def scale_tril(self):
        return jnp.linalg.cholesky(self.covariance)

    def entropy(self):
        # log|Sigma| = log|K| - log|B|
        log_det_k = 2.0 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(self.prior_covariance))))
        log_det_b = 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.factorise().cholesky_b)))
        n = self.lam1.shape[0]
        return 0.5 * (n * (1.0 + jnp.log(2.0 * jnp.pi)) + log_det_k - log_det_b)


def dense_kl(
    q: DenseGaussianVariational | DiagonalGaussianVariational,
    prior_mean: Float[Array, " D"],
    prior_scale_tril: Float[Array, "D D"],
) -> Float[Array, ""]:
    """`KL(q || N(m0, S0 S0^T))` for the parametric families."""
    return gaussian_kl(q.mean, q.scale_tril(), prior_mean, prior_scale_tril)
