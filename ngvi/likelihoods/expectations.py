"""Per-point expectations in the model protocol's layout.

Models hand over latent marginals of shape `(B, C)` (or a full `(B, C, C)` covariance per point)
and expect per-point statistics in the same layout (`ngvi.families.SiteStatistics`). A
likelihood with one latent (`num_latent == 1`) works on `(B,)` vectors; these functions do the
conversion, so a likelihood author never sees the latent axis unless the likelihood has
several latents.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..families.base import Marginals, SiteStatistics
from .multi import row_major_normal


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


def _coupled(likelihood, marginals: Marginals) -> bool:
    """Several latents per point with a full covariance (the coupled family); a parametric
    model's one joint point (`JointLogLikelihood`) keeps its own expectations."""
    return marginals.variance.ndim == 3 and hasattr(likelihood, "full_derivatives")


def expected_statistics(likelihood, y: Float[Array, " B"], marginals: Marginals) -> SiteStatistics:
    """`E_q[log p]`, `E_q[g]`, `E_q[H]` by the likelihood's closed forms or quadrature; under a
    full `(B, C, C)` covariance per point (the coupled family), by Monte Carlo with the
    likelihood's common random numbers (`coupled_statistics`)."""
    if _coupled(likelihood, marginals):
        return SiteStatistics(*coupled_statistics(likelihood, y, marginals)[:3])
    return _per_point(likelihood.expected_derivatives, y, marginals)


def gauss_newton_statistics(likelihood, y, marginals: Marginals) -> SiteStatistics:
    """As `expected_statistics` with the Gauss-Newton curvature `E_q[-mu'(f)^2 / v(f)]`."""
    return _per_point(likelihood.gauss_newton_derivatives, y, marginals)


def expected_log_prob(likelihood, y, marginals: Marginals) -> Float[Array, " B"]:
    """`E_q[log p(y_b | f_b)]` per point (closed form or quadrature; Monte Carlo with common
    random numbers under a full covariance per point)."""
    if _coupled(likelihood, marginals):
        return coupled_statistics(likelihood, y, marginals, derivatives=False).log_prob
    if marginals.mean.shape[1] == 1 and marginals.variance.ndim == 2:
        return likelihood.expected_log_prob(y, marginals.mean[:, 0], marginals.variance[:, 0])
    return likelihood.expected_log_prob(y, marginals.mean, marginals.variance)


def expected_log_prob_error(likelihood, y, marginals: Marginals) -> Float[Array, " B"]:
    """The standard error of `expected_log_prob` per point (0 where it is exact)."""
    if _coupled(likelihood, marginals):
        return coupled_statistics(likelihood, y, marginals, derivatives=False).error
    error = getattr(likelihood, "expected_log_prob_error", None)
    if error is None:
        return jnp.zeros(marginals.mean.shape[0], marginals.mean.dtype)
    return error(y, marginals.mean, marginals.variance)


def quadrature_error(likelihood, y, marginals: Marginals) -> Float[Array, " B"]:
    """`likelihood.quadrature_error` per point (the change of its quadrature when the nodes are
    doubled; for several latents, `(B, C)` marginals, 0 unless the likelihood has a quadrature
    rule: `RobustMax`); 0 under a full covariance per point, whose Monte Carlo expectations
    report their error in `expected_log_prob_error`."""
    if marginals.variance.ndim != 2:
        return jnp.zeros(marginals.mean.shape[0], marginals.mean.dtype)
    if marginals.mean.shape[1] == 1:
        mean, variance = marginals.mean[:, 0], marginals.variance[:, 0]
        return likelihood.quadrature_error(y, mean, variance)
    return likelihood.quadrature_error(y, marginals.mean, marginals.variance)


class CoupledStatistics(NamedTuple):
    """Monte Carlo statistics under a full covariance per point (`coupled_statistics`)."""

    log_prob: Float[Array, " B"]
    grad: Float[Array, "B C"] | None
    hess: Float[Array, "B C C"] | None
    error: Float[Array, " B"]


_SAMPLE_CHUNK = 32


def coupled_statistics(
    likelihood, y, marginals: Marginals, derivatives: bool = True
) -> CoupledStatistics:
    """`E[log p]`, `E[g]` and the full `E[H]` per point when `f_b ~ N(m_b, V_b)` with a full
    `C x C` covariance: averages over `num_mc_samples` antithetic draws `f = m_b +/- V_b^1/2 eps`
    from the likelihood's fixed key `mc_seed` (common random numbers: a smooth, deterministic
    function of `q`; antithetic pairs make `E[g]` exact for a gradient linear in `f`;
    `V_b^1/2` is the Cholesky factor), accumulated `32` draws at a time so memory is
    `O(32 B C^2)`; `error` is the standard error of `E[log p]`."""
    full = getattr(likelihood, "full_derivatives", None)
    if full is None or not likelihood.differentiable:
        raise ValueError(
            f"{type(likelihood).__name__} has no Monte Carlo derivatives under a full "
            "covariance per point; the coupled family needs a differentiable likelihood with "
            "several latents (e.g. Softmax)."
        )
    mean, covariance = marginals
    # A Cholesky root, not an eigendecomposition: the gradient of `eigh` is NaN at repeated
    # eigenvalues (every point at the prior has covariance k(x, x) I), which made the ELBO's
    # gradient in the kernel NaN there.
    symmetric = 0.5 * (covariance + jnp.swapaxes(covariance, -1, -2))
    root = jnp.linalg.cholesky(symmetric + _tiny_ridge(symmetric))
    count = likelihood.num_mc_samples
    chunks = -(-count // _SAMPLE_CHUNK)
    half = row_major_normal(likelihood.mc_seed, (count + 1) // 2, mean.shape, mean.dtype)
    noise = jnp.concatenate([half, -half])[:count]
    padding = jnp.zeros((chunks * _SAMPLE_CHUNK - count,) + mean.shape, mean.dtype)
    noise = jnp.concatenate([noise, padding])
    used = (jnp.arange(chunks * _SAMPLE_CHUNK) < count).astype(mean.dtype)

    def per_sample(f_s):  # (B, C) -> log p and, when asked, its derivatives
        if derivatives:
            log_p, grad, hess = full(f_s, y)
            return log_p, log_p**2, grad, hess
        log_p = likelihood.log_prob(f_s, y)
        return log_p, log_p**2

    def one_chunk(total, chunk):
        eps, weight = chunk
        values = jax.vmap(per_sample)(mean[None] + jnp.einsum("bij,sbj->sbi", root, eps))
        sums = jax.tree.map(lambda v: jnp.tensordot(weight, v, axes=1), values)
        return jax.tree.map(jnp.add, total, sums), None

    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(per_sample, mean))
    split = lambda a: a.reshape((chunks, _SAMPLE_CHUNK) + a.shape[1:])  # noqa: E731
    sums, _ = jax.lax.scan(one_chunk, zeros, (split(noise), split(used)))
    log_prob, squares = sums[0] / count, sums[1] / count
    error = jnp.sqrt(jnp.maximum(squares - log_prob**2, 0.0) / count)
    if not derivatives:
        return CoupledStatistics(log_prob, None, None, error)
    return CoupledStatistics(log_prob, sums[2] / count, sums[3] / count, error)


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
