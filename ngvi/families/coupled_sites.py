r"""A dense GP posterior over several latent functions, coupled at every data point.

The mean-field site family (`SiteGaussianVariational`) keeps one scalar site per latent
function and point, so the latents are independent under `q`. The exact natural gradient of a
likelihood that couples the latents (softmax) has a `C x C` curvature block per point; this
family keeps it (Rasmussen & Williams 2006, sec. 3.5, whose Algorithm 3.3 is the softmax case):

$$q(f) \propto p(f) \prod_i \exp\big(\lambda_{1,i}^\top f_i + f_i^\top \Lambda_{2,i} f_i\big),
\qquad W_i = -2 \Lambda_{2,i} \succeq 0,$$

with $f_i \in \mathbb{R}^C$ the latents at point $i$ and $p(f) = \prod_c \mathcal{GP}(m_c, k_c)$.
Stacked class by class ($f = [f_1(X); \dots; f_C(X)]$, $n = C N$), the prior covariance
$K$ is block diagonal over classes and $W$ is block diagonal over points. With $S$ the
symmetric square root of $W$ (per point, $S_i = W_i^{1/2}$ from a $C \times C$ eigenproblem),

$$B = I + S K S = L L^\top \ (\text{eigenvalues} \ge 1), \qquad
a = \lambda_1 - S B^{-1} S (m + K \lambda_1), \qquad \mu = m + K a,$$

$$\Sigma = K - V^\top V, \quad V = L^{-1} S K, \qquad
\mathrm{KL} = \tfrac12\big[a^\top K a - \operatorname{tr}(I - B^{-1})\big] + \sum_j \log L_{jj},$$

and $\operatorname{tr}(I - B^{-1}) = \operatorname{tr}(L^{-1} (S K S) L^{-\top})$ is summed from
its terms, never as a difference from $n$. One Cholesky of an $n \times n$ matrix per step:
$O(C^3 N^3)$, against $C$ Cholesky factors of $N \times N$ for the mean-field family. $K^{-1}$ is
never formed.
"""

from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from jaxtyping import Array, Float

from .._linalg import lower_inverse
from .base import AbstractVariational, Marginals

_PREDICTION_CHUNK = 256


class CoupledFactors(NamedTuple):
    """What one Cholesky of `B = I + S K S` gives (`n = C N`, class-major)."""

    inverse_cholesky: Array  # L^-1 (n, n)
    root: Array  # S_i = W_i^1/2 per point (N, C, C)
    weights: Array  # a (C, N), with mu = m + K a
    mean: Array  # mu (C, N)
    covariance: Array  # Sigma_i per point (N, C, C)
    kl: Array  # KL(q || p)


def _stacked_prior(view, num_latent: int) -> tuple[Array, Array]:
    """The prior covariances `(C, N, N)` and means `(C, N)`, one per latent function."""
    covariance, mean = view.covariance, view.mean
    if not view.per_latent:
        covariance = jnp.broadcast_to(covariance, (num_latent,) + covariance.shape)
        mean = jnp.broadcast_to(mean, (num_latent,) + mean.shape)
    return covariance, mean


def _symmetric_root(precision: Float[Array, "N C C"]) -> Float[Array, "N C C"]:
    """`W_i^1/2` (symmetric) per point; eigenvalues below 0 (rounding) count as 0."""
    values, vectors = jnp.linalg.eigh(0.5 * (precision + jnp.swapaxes(precision, -1, -2)))
    roots = jnp.sqrt(jnp.maximum(values, 0.0))
    return jnp.einsum("nij,nj,nkj->nik", vectors, roots, vectors)


def _times_root(root: Float[Array, "N C C"], x: Float[Array, "C N"]) -> Float[Array, "C N"]:
    """`S x` for a class-major vector `x`."""
    return jnp.einsum("icd,di->ci", root, x)


def factorise_coupled(
    covariance: Float[Array, "C N N"],
    prior_mean: Float[Array, "C N"],
    lam1: Float[Array, "N C"],
    lam2: Float[Array, "N C C"],
) -> CoupledFactors:
    """Marginal covariances, mean and KL of the coupled-site posterior (module docstring)."""
    num_latent, num_points = prior_mean.shape
    n = num_latent * num_points
    dtype = covariance.dtype
    root = _symmetric_root(-2.0 * lam2)
    # (S K)[c i, d j] = S_i[c, d] K_d[i, j]
    # (S K S)[c i, e j] = sum_d S_i[c, d] K_d[i, j] S_j[d, e]
    root_k = jnp.einsum("icd,dij->cidj", root, covariance).reshape(n, n)
    root_k_root = jnp.einsum("icd,dij,jde->ciej", root, covariance, root).reshape(n, n)
    cholesky_b = jnp.linalg.cholesky(jnp.eye(n, dtype=dtype) + root_k_root)
    inverse = lower_inverse(cholesky_b)
    v = (inverse @ root_k).reshape(n, num_latent, num_points)
    diagonal = jnp.diagonal(covariance, axis1=-2, axis2=-1)  # (C, N)
    covariances = jnp.einsum("ci,cd->icd", diagonal, jnp.eye(num_latent, dtype=dtype))
    covariances = covariances - jnp.einsum("kci,kdi->icd", v, v)

    def k_times(x):
        return jnp.einsum("cij,cj->ci", covariance, x)

    lam1 = lam1.T
    rhs = _times_root(root, prior_mean + k_times(lam1)).reshape(n)
    solved = jsl.cho_solve((cholesky_b, True), rhs).reshape(num_latent, num_points)
    weights = lam1 - _times_root(root, solved)
    projected = k_times(weights)
    trace = jnp.sum(inverse * (inverse @ root_k_root))  # tr(I - B^-1), every term >= 0
    kl = 0.5 * (jnp.sum(weights * projected) - trace) + jnp.sum(jnp.log(jnp.diagonal(cholesky_b)))
    return CoupledFactors(
        inverse, root, weights, prior_mean + projected, _symmetrised(covariances), kl
    )


def _symmetrised(matrices: Array) -> Array:
    return 0.5 * (matrices + jnp.swapaxes(matrices, -1, -2))


class CoupledSiteGaussianVariational(AbstractVariational):
    """A dense GP posterior over `C` latent functions as the prior times one `C x C` site per
    data point (see the module docstring): `Model(..., family="coupled")`.

    **Fields:** `lam1` `(N, C)` and `lam2` `(N, C, C)` (symmetric, `W_i = -2 lam2_i >= 0`). The
    prior comes from the model (`model.site_view()`), as for the mean-field sites. The
    natural-gradient step sets each site to `(E[g_i] - E[H_i] mu_i, 1/2 E[H_i])` with the full
    `C x C` expected Hessian, so it is the exact natural gradient of this (larger) family;
    `Marginals.variance` is `(B, C, C)`.
    """

    lam1: Float[Array, "N C"]
    lam2: Float[Array, "N C C"]
    diagonal_precision: ClassVar[bool] = False

    @classmethod
    def at_prior(cls, num_points: int, num_latent: int, dtype) -> "CoupledSiteGaussianVariational":
        """Zero sites: `q` equals the prior (made by numpy: `jnp.zeros` compiles)."""
        return cls(
            jax.device_put(np.zeros((num_points, num_latent), dtype)),
            jax.device_put(np.zeros((num_points, num_latent, num_latent), dtype)),
        )

    @property
    def parameters(self):
        return self.lam1, self.lam2

    def with_parameters(self, parameters):
        return CoupledSiteGaussianVariational(*parameters)

    @property
    def site_precision(self) -> Float[Array, "N C C"]:
        """`W_i = -2 lam2_i`, the sites' `C x C` precisions."""
        return -2.0 * self.lam2

    def factorise(self, model, batch=None) -> CoupledFactors:
        """`factorise_coupled` under `model`'s prior."""
        covariance, mean = _stacked_prior(model.site_view(batch), self.lam1.shape[1])
        return factorise_coupled(covariance, mean, self.lam1, self.lam2)

    def marginals_and_kl(self, model, batch):
        factors = self.factorise(model, batch)
        return Marginals(factors.mean.T, factors.covariance), factors.kl

    def predict(self, model, X_new):
        """`E[f*_c] = m_c(x*) + k_c(x*)^T a_c` and the `C x C` covariance
        `diag_c k_c(x*, x*) - U^T U`, `U = L^-1 S K_*`, in chunks of new points."""
        from ..models.chunks import chunked_rows  # models import families: import at use

        num_latent = self.lam1.shape[1]
        factors = self.factorise(model)
        new = model.site_prediction_view(X_new)
        cross, new_mean, new_variance = new.cross_covariance, new.mean, new.variance
        if not new.per_latent:
            cross = jnp.broadcast_to(cross, (num_latent,) + cross.shape)
            new_mean = jnp.broadcast_to(new_mean, (num_latent,) + new_mean.shape)
            new_variance = jnp.broadcast_to(new_variance, (num_latent,) + new_variance.shape)
        eye = jnp.eye(num_latent, dtype=cross.dtype)

        def chunk(rows):
            cross_rows, mean_rows, variance_rows = rows  # (m, C, N), (m, C), (m, C)
            mean = mean_rows + jnp.einsum("mci,ci->mc", cross_rows, factors.weights)
            root_cross = jnp.einsum("icd,mdi->cimd", factors.root, cross_rows)
            n = factors.inverse_cholesky.shape[0]
            u = (factors.inverse_cholesky @ root_cross.reshape(n, -1)).reshape(n, -1, num_latent)
            covariance = variance_rows[:, :, None] * eye[None] - jnp.einsum("kmd,kme->mde", u, u)
            return mean, _symmetrised(covariance)

        rows = (jnp.moveaxis(cross, 2, 0), new_mean.T, new_variance.T)
        mean, covariance = chunked_rows(chunk, rows, _PREDICTION_CHUNK)
        return Marginals(mean, covariance)

    def posterior(self, model):
        """Mean `(C, N)` and the joint covariance `(C, N, C, N)` of all latents at all
        training points: `K - V^T V`."""
        covariance, _ = _stacked_prior(model.site_view(None), self.lam1.shape[1])
        factors = self.factorise(model)
        num_latent, num_points = factors.mean.shape
        n = num_latent * num_points
        root_k = jnp.einsum("icd,dij->cidj", factors.root, covariance).reshape(n, n)
        v = factors.inverse_cholesky @ root_k
        prior = jnp.einsum("cij,cd->cidj", covariance, jnp.eye(num_latent, dtype=v.dtype))
        joint = prior.reshape(n, n) - v.T @ v
        return factors.mean, (0.5 * (joint + joint.T)).reshape(
            num_latent, num_points, num_latent, num_points
        )

    def natural_target(self, model, batch, marginals, statistics, scale):
        """The sites `(E[g_i] - E[H_i] mu_i, 1/2 E[H_i])` with the full `C x C` `E[H_i]`."""
        if statistics.hess.ndim != 3:
            raise ValueError(
                "The coupled family needs the full C x C expected Hessian per point; the "
                "curvature estimator gave only its diagonal."
            )
        hess = _symmetrised(statistics.hess)
        lam1 = statistics.grad - jnp.einsum("bcd,bd->bc", hess, marginals.mean)
        return lam1 * scale, 0.5 * hess * scale

    def coordinate_mean(self, marginals):
        return marginals.mean

    def precision_is_valid(self):
        """Finite, and every `W_i` positive semi-definite up to rounding: the softmax curvature
        `diag(pi) - pi pi^T` is singular (the constant direction), so its smallest eigenvalue
        comes out as a few ulps either side of 0."""
        finite = jnp.all(jnp.isfinite(self.lam1)) & jnp.all(jnp.isfinite(self.lam2))
        values = jnp.linalg.eigvalsh(_symmetrised(self.site_precision))
        rounding = 64 * jnp.finfo(values.dtype).eps * jnp.max(jnp.abs(values), axis=-1)
        return finite & jnp.all(values[:, 0] >= -rounding)

    def min_precision(self):
        """The smallest eigenvalue of any site precision `W_i`."""
        return jnp.min(jnp.linalg.eigvalsh(_symmetrised(self.site_precision)))

    def prepared_for_psd_correction(self, model):
        """Sites whose `W_i` is not positive definite start at the prior's marginal precision
        `diag_c(1 / K_c,ii)`, with `lam1_i` shifted by `W_i m_i` (a `q` at the prior keeps its
        mean)."""
        num_latent = self.lam1.shape[1]
        covariance, mean = _stacked_prior(model.site_view(None), num_latent)
        start = jnp.einsum(
            "ci,cd->icd",
            1.0 / jnp.diagonal(covariance, axis1=-2, axis2=-1),
            jnp.eye(num_latent, dtype=self.lam1.dtype),
        )
        empty = jnp.linalg.eigvalsh(_symmetrised(self.site_precision))[:, 0] <= 0
        shifted = self.lam1 + jnp.einsum("icd,di->ic", start, mean)
        lam1 = jnp.where(empty[:, None], shifted, self.lam1)
        lam2 = jnp.where(empty[:, None, None], -0.5 * start, self.lam2)
        return CoupledSiteGaussianVariational(lam1, lam2)
