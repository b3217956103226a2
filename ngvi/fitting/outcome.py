"""How a fit ended, and when a strategy says it should end."""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


class FitOutcome(eqx.Enumeration):
    """How a fit ended (`result.outcome`; `result.message` says it in words)."""

    max_steps = "the step budget ran out before the ELBO met the tolerance"
    converged = (
        "converged: over the last steps the ELBO changed by less than the tolerance per unit "
        "step size"
    )
    failed = "a step produced NaN/inf; the last finite posterior was kept"
    stalled = (
        "no step size kept the precision positive definite (every backoff was rejected); "
        "the last valid posterior was kept: try psd_correction=True, GaussNewton or a smaller lr"
    )
    schedule_ended = (
        "the step-size schedule reached 0, so q stopped moving before the ELBO met the "
        "tolerance: give the schedule a positive end value or fewer steps"
    )
    interrupted = "interrupted (Ctrl-C); the last completed step's posterior was kept"


def is_one_of(outcome, *members) -> bool:
    """Whether the concrete `FitOutcome` item `outcome` is one of `members`, decided on the
    host by their messages (which differ): `outcome == member` compiles a small XLA program on
    a process's first fit."""
    return str(FitOutcome[outcome]) in {FitOutcome[member] for member in members}


def converged_within(
    elbo: Float[Array, " T"],
    step_size: Float[Array, " T"],
    t: Int[Array, ""],
    tol: Float[Array, ""],
    window: int,
    smoothing: int = 1,
) -> Array:
    """Whether the ELBO has converged after step `t` (`elbo[k]` is the ELBO before step `k`).

    Over the last `window` steps, every change of the ELBO (averaged over `smoothing`
    consecutive steps, for Monte Carlo strategies) divided by the step size that made it must
    be at most `max(tol, 100 eps) * (1 + |ELBO|)`. Dividing by the step size makes a schedule or
    a backoff that shrinks the steps unable to fake convergence; `tol = 0` disables it.
    """
    span = window + smoothing
    ks = t - jnp.arange(window)  # the ELBO after the step k - 1, for the last `window` k
    recent = elbo[jnp.maximum(ks, 0)]
    earlier = elbo[jnp.maximum(ks - smoothing, 0)]
    rho = step_size[jnp.maximum(ks - 1, 0)]
    change = jnp.abs(recent - earlier) / smoothing
    threshold = jnp.maximum(tol, 100 * jnp.finfo(elbo.dtype).eps) * (1.0 + jnp.abs(elbo[t]))
    small = change <= threshold * rho
    moving = rho > vanishing_step_size(elbo.dtype)
    finite = jnp.isfinite(recent) & jnp.isfinite(earlier)  # a retreat from an overshoot
    return (tol > 0) & (t >= span - 1) & jnp.all(small & moving & finite)


def vanishing_step_size(dtype) -> float:
    """Step sizes at or below `100 eps` count as zero: a schedule that decays to 0 under `jit`
    often stops at a rounding residue such as `1e-17` rather than at 0 exactly."""
    return 100 * float(jnp.finfo(dtype).eps)
