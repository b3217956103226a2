"""Safeguards for natural-gradient steps: step backoff, PSD correction and a precision floor.

A natural-gradient step moves `q`'s natural parameters toward a target,

    eta_new = (1 - rho) eta + rho eta_target,

and the new precision `Lambda_new = -2 eta2_new` must stay valid: for the GP site family every
site precision `W_i >= 0` (the site form factorises `B = I + W^1/2 K W^1/2`), for the dense
family `Lambda_new` positive definite (a finite Cholesky factor), for the diagonal family every
precision `> 0`. When the precision is replaced by a safeguarded `Lambda_safe` (PSD correction,
floor), the mean keeps its natural-gradient form `mu_new = mu + rho Lambda_new^-1 g_bar`, which
in natural parameters is

    eta1_new = eta1_plain + (Lambda_safe - Lambda_plain) mu,

with `mu` the mean of the variable the precision lives on (the latent `f` for sites, the
weights for the parametric families).
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ..gaussian import damped_natural_update, riemannian_psd_correction
from ..variational import GaussianVariational, SiteGaussianVariational


def precision_of(q: GaussianVariational) -> Array:
    """`Lambda = -2 eta2`: site precisions `W` (GP), the diagonal, or the dense matrix."""
    return -2.0 * q.parameters[1]


def min_precision_of(q: GaussianVariational) -> Float[Array, ""]:
    """Smallest site precision (GP) or smallest diagonal precision (parametric) of `q`."""
    precision = precision_of(q)
    return jnp.min(precision if precision.ndim == 1 else jnp.diagonal(precision))


def precision_is_valid(q: GaussianVariational) -> Bool[Array, ""]:
    """Whether `q`'s natural parameters are finite and its precision usable:
    `W >= 0` for sites, a finite Cholesky factor with a positive diagonal for a dense
    precision, `> 0` for a diagonal."""
    eta1, _ = q.parameters
    precision = precision_of(q)
    finite = jnp.all(jnp.isfinite(eta1)) & jnp.all(jnp.isfinite(precision))
    if isinstance(q, SiteGaussianVariational):
        return finite & jnp.all(precision >= 0)
    if precision.ndim == 1:
        return finite & jnp.all(precision > 0)
    safe = jnp.where(finite, precision, jnp.eye(precision.shape[0], dtype=precision.dtype))
    factor = jnp.linalg.cholesky(safe)
    return finite & jnp.all(jnp.isfinite(factor)) & jnp.all(jnp.diagonal(factor) > 0)


def safeguarded_update(
    q: GaussianVariational,
    target: GaussianVariational,
    mean: Array | None,
    rho: Float[Array, ""],
    *,
    psd_correction: bool = False,
    precision_floor: float = 0.0,
) -> GaussianVariational:
    """The step `q -> q_new` at step size `rho`, with the optional precision safeguards:

    - plain: `eta_new = (1 - rho) eta + rho eta_target`;
    - `psd_correction`: `Lambda_new = Lambda - rho G + rho^2/2 G Lambda^-1 G`,
      `G = Lambda - Lambda_target` (Lin, Schmidt & Khan 2020; `ngvi.riemannian_psd_correction`),
      positive definite for any `rho` when `Lambda` is (elementwise for sites and diagonals);
    - `precision_floor > 0`: site / diagonal precisions clamped `>= precision_floor`.

    `mean` (of the variable the precision acts on) is needed only when a safeguard changes the
    precision; it keeps `eta1` consistent as in the module docstring.
    """
    plain = damped_natural_update(q.parameters, target.parameters, rho)
    if not psd_correction and precision_floor <= 0:
        return q.with_parameters(plain)
    eta1_plain, eta2_plain = plain
    precision_plain = -2.0 * eta2_plain
    if psd_correction:
        precision = riemannian_psd_correction(precision_of(q), precision_of(target), rho)
    else:
        precision = precision_plain
    if precision_floor > 0:
        if precision.ndim != 1:
            raise ValueError(
                "`precision_floor` applies to site and diagonal precisions; a dense precision "
                "is kept positive definite by backoff or `psd_correction=True` instead."
            )
        precision = jnp.maximum(precision, precision_floor)
    change = precision - precision_plain
    shift = change * mean if change.ndim == 1 else change @ mean
    return q.with_parameters((eta1_plain + shift, -0.5 * precision))


def backoff_update(
    q: GaussianVariational,
    target: GaussianVariational,
    mean: Array | None,
    rho: Float[Array, ""],
    max_backoffs: int,
    **safeguards,
) -> tuple[GaussianVariational, Float[Array, ""], Int[Array, ""]]:
    """`safeguarded_update` with step backoff: while the new precision is not valid
    (`precision_is_valid`), halve `rho`, at most `max_backoffs` times (a `lax.while_loop`).

    **Returns:** `(q_new, accepted_rho, num_backoffs)`. If no step size is valid, `q` is kept
    and the accepted step size is `0`.
    """

    def propose(step):
        return safeguarded_update(q, target, mean, step, **safeguards)

    def invalid(carry):
        step, count = carry
        return (count < max_backoffs) & ~precision_is_valid(propose(step))

    def halve(carry):
        step, count = carry
        return 0.5 * step, count + 1

    rho = jnp.asarray(rho)
    rho, num_backoffs = jax.lax.while_loop(invalid, halve, (rho, jnp.asarray(0)))
    proposed = propose(rho)
    accepted = precision_is_valid(proposed)
    parameters = jax.tree.map(
        lambda new, old: jnp.where(accepted, new, old), proposed.parameters, q.parameters
    )
    return (
        q.with_parameters(parameters),
        jnp.where(accepted, rho, jnp.zeros_like(rho)),
        num_backoffs,
    )
