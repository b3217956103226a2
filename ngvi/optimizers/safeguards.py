"""Safeguards for natural-gradient steps: step backoff, PSD correction and a precision floor.

A natural-gradient step moves `q`'s natural parameters toward a target,

    eta_new = (1 - rho) eta + rho eta_target,        (`ngvi.damped_natural_update`)

and the new precision `Lambda_new = -2 eta2_new` must stay valid (`q.precision_is_valid()`:
site precisions `W >= 0`, a diagonal `> 0`, a matrix with a finite Cholesky factor). When the
precision is replaced by a safeguarded `Lambda_safe` (PSD correction, floor), the mean keeps its
natural-gradient form `mu_new = mu + rho Lambda_new^-1 g_bar`, which in natural parameters is

    eta1_new = eta1_plain + (Lambda_safe - Lambda_plain) mu,

with `mu` the mean of the coordinates the precision acts on (`q.coordinate_mean`).
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..families import AbstractVariational
from ..families.views import each_latent
from ..gaussian import damped_natural_update, riemannian_psd_correction


def safeguarded_update(
    q: AbstractVariational,
    target: tuple[Array, Array],
    mean: Array | None,
    rho: Float[Array, ""],
    *,
    psd_correction: bool = False,
    precision_floor: float = 0.0,
) -> AbstractVariational:
    """The step `q -> q_new` at step size `rho`, with the optional precision safeguards:

    - plain: `eta_new = (1 - rho) eta + rho eta_target`;
    - `psd_correction`: `Lambda_new = Lambda - rho G + rho^2/2 G Lambda^-1 G`,
      `G = Lambda - Lambda_target` (Lin, Schmidt & Khan 2020; `ngvi.riemannian_psd_correction`),
      positive definite for any `rho` when `Lambda` is (elementwise for sites and diagonals);
    - `precision_floor > 0`: site / diagonal precisions clamped `>= precision_floor`.
    """
    plain = damped_natural_update(q.parameters, target, rho)
    if not psd_correction and precision_floor <= 0:
        return q.with_parameters(plain)
    eta1_plain, eta2_plain = plain
    precision_plain = -2.0 * eta2_plain
    precision = precision_plain
    if psd_correction:
        # One latent function at a time: `(N,)` or `(D,)` elementwise, `(D, D)` as a matrix.
        precision = each_latent(
            lambda p, t: riemannian_psd_correction(p, t, rho), q.precision, -2.0 * target[1]
        )
    if precision_floor > 0:
        precision = jnp.maximum(precision, precision_floor)
    change = precision - precision_plain
    if q.diagonal_precision:
        shift = change * mean
    else:
        shift = jnp.einsum("cij,cj->ci", change, mean)
    return q.with_parameters((eta1_plain + shift, -0.5 * precision))


def backoff_update(
    q: AbstractVariational,
    target: tuple[Array, Array],
    mean: Array | None,
    rho: Float[Array, ""],
    max_backoffs: int,
    **safeguards,
) -> tuple[AbstractVariational, Float[Array, ""], Int[Array, ""]]:
    """`safeguarded_update` with step backoff: while the new `q` is not valid, halve `rho`, at
    most `max_backoffs` times (a `lax.while_loop`).

    **Returns:** `(q_new, accepted_rho, num_backoffs)`. If no step size is valid, `q` is kept
    and the accepted step size is `0`.
    """

    def propose(step):
        return safeguarded_update(q, target, mean, step, **safeguards)

    def invalid(carry):
        step, count = carry
        return (count < max_backoffs) & ~propose(step).precision_is_valid()

    def halve(carry):
        step, count = carry
        return 0.5 * step, count + 1

    rho = jnp.asarray(rho)
    rho, num_backoffs = jax.lax.while_loop(invalid, halve, (rho, jnp.asarray(0)))
    proposed = propose(rho)
    accepted = proposed.precision_is_valid()
    parameters = jax.tree.map(
        lambda new, old: jnp.where(accepted, new, old), proposed.parameters, q.parameters
    )
    return (
        q.with_parameters(parameters),
        jnp.where(accepted, rho, jnp.zeros_like(rho)),
        num_backoffs,
    )
