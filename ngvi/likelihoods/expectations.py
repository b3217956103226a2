"""Per-point expectations in the model protocol's layout.

Models hand over latent marginals of shape `(B, C)` (or a full `(B, C, C)` covariance per point)
and expect per-point statistics in the same layout (`ngvi.families.SiteStatistics`). A
likelihood with one latent (`num_latent == 1`) works on `(B,)` vectors; these functions do the
conversion, so a likelihood author never sees the latent axis unless the likelihood has
several latents.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..families.base import Marginals, SiteStatistics


def _per_point(method, y, marginals: Marginals) -> SiteStatistics:
    if marginals.variance.ndim != 2:
        raise ValueError(
            "Deterministic expectations need independent latents (a (B, C) variance); this "
            "model's latent has a full covariance per point, which Monte Carlo (`ngvi.BLR`) "
            "handles."
        )
    if marginals.mean.shape[1] == 1:
        log_p, grad, hess = method(y, marginals.mean[:, 0], marginals.variance[:, 0])
        return SiteStatistics(log_p, grad[:, None], hess[:, None])
    return SiteStatistics(*method(y, marginals.mean, marginals.variance))


def expected_statistics(likelihood, y: Float[Array, " B"], marginals: Marginals) -> SiteStatistics:
    """`E_q[log p]`, `E_q[g]`, `E_q[H]` by the likelihood's closed forms or quadrature."""
    return _per_point(likelihood.expected_derivatives, y, marginals)


def gauss_newton_statistics(likelihood, y, marginals: Marginals) -> SiteStatistics:
    """As `expected_statistics` with the Gauss-Newton curvature `E_q[-mu'(f)^2 / v(f)]`."""
    return _per_point(likelihood.gauss_newton_derivatives, y, marginals)


def expected_log_prob(likelihood, y, marginals: Marginals) -> Float[Array, " B"]:
    """`E_q[log p(y_b | f_b)]` per point (closed form or quadrature)."""
    if marginals.mean.shape[1] == 1 and marginals.variance.ndim == 2:
        return likelihood.expected_log_prob(y, marginals.mean[:, 0], marginals.variance[:, 0])
    return likelihood.expected_log_prob(y, marginals.mean, marginals.variance)


def sampled_statistics(
    likelihood, y, marginals: Marginals, key: PRNGKeyArray, num_samples: int, at_mean: bool
) -> tuple[Float[Array, "B C"], Array]:
    """Monte Carlo `E_q[g]` and `E_q[H]` from reparameterised samples `f = m + R eps` of the
    marginals (Bonnet's and Price's estimators), or `g` and `H` at the mean when `at_mean`.

    Independent latents (`(B, C)` variances) give the diagonal Hessian blocks; a full
    covariance per point gives full `(B, C, C)` Hessians (`jax.hessian` per point).
    """
    mean, variance = marginals
    full = variance.ndim == 3
    if at_mean:
        samples = mean[None]
    else:
        noise = jax.random.normal(key, (num_samples,) + mean.shape, dtype=mean.dtype)
        if full:
            root = jnp.linalg.cholesky(variance + _tiny_ridge(variance))
            samples = mean[None] + jnp.einsum("bij,sbj->sbi", root, noise)
        else:
            samples = mean[None] + jnp.sqrt(jnp.maximum(variance, 0.0))[None] * noise
    if full:

        def point_log_prob(f, y_b):
            return likelihood.log_prob(f, y_b)

        grad = jax.vmap(jax.vmap(jax.grad(point_log_prob)), in_axes=(0, None))(samples, y)
        hess = jax.vmap(jax.vmap(jax.hessian(point_log_prob)), in_axes=(0, None))(samples, y)
    elif mean.shape[1] == 1:
        _, grad, hess = jax.vmap(lambda f: likelihood.derivatives(f[:, 0], y))(samples)
        grad, hess = grad[..., None], hess[..., None]
    else:
        _, grad, hess = jax.vmap(lambda f: likelihood.derivatives(f, y))(samples)
    return jnp.mean(grad, axis=0), jnp.mean(hess, axis=0)


def _tiny_ridge(covariance: Array) -> Array:
    """A ridge of a few ulps of the diagonal, so a rank-deficient covariance still factors."""
    scale = jnp.max(jnp.diagonal(covariance, axis1=-2, axis2=-1), axis=-1)
    eye = jnp.eye(covariance.shape[-1], dtype=covariance.dtype)[None]
    return 10 * jnp.finfo(covariance.dtype).eps * scale[:, None, None] * eye
