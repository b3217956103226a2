"""Saying why an ELBO is not finite (which data points, or which part of the prior), or why a
finite one is not accurate (its quadrature)."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..likelihoods.expectations import expected_statistics


@eqx.filter_jit
def _pointwise(model, q):
    marginals, kl = model.latent_marginals_and_kl(q)
    statistics = expected_statistics(model.likelihood, model.y, marginals)
    finite = jnp.isfinite(statistics.grad) & jnp.isfinite(statistics.hess)
    derivatives_finite = jnp.all(finite.reshape(finite.shape[0], -1), axis=1)
    return model.expected_log_likelihood(model.y, marginals), kl, derivatives_finite


def _points(model, indices) -> str:
    shown = ", ".join(f"{int(i)} (y = {float(model.y[i]):g})" for i in indices[:5])
    return shown + ("" if indices.size <= 5 else f" and {indices.size - 5} more")


def describe_failure(model, q) -> str:
    """One or two sentences naming what makes the ELBO of `q` under `model` non-finite (the
    prior's covariance, the KL, or the data points whose expected log-likelihood is not finite),
    with what to do about it."""
    prior_problem = model.diagnose(q)
    if prior_problem:
        return prior_problem
    expected, kl, derivatives_finite = _pointwise(model, q)
    bad = np.flatnonzero(~np.isfinite(np.asarray(expected)))
    if bad.size:
        return (
            f"The expected log-likelihood is not finite at {bad.size} data point(s): "
            f"{_points(model, bad)}. Check those targets against the likelihood's support and "
            "its `log_prob` there (for very large counts, set the prior mean near log(mean "
            "count))."
        )
    if not bool(jnp.isfinite(kl)):
        return "KL(q || p) is not finite: the posterior or the prior covariance is degenerate."
    bad = np.flatnonzero(~np.asarray(derivatives_finite))
    if bad.size:
        return (
            "The likelihood's expected gradient or curvature (of `log_prob` in the latent) is "
            f"not finite at {bad.size} data point(s): {_points(model, bad)}, where its "
            "expected value is finite, so no step size can help. Write `log_prob` so that "
            "its first two derivatives are finite there (autodiff through an infinite or "
            "clipped intermediate, e.g. `log(Phi(inf - f) - Phi(c - f))`, gives NaN; use "
            "`jnp.where` branches or `log_ndtr`)."
        )
    return "Try a smaller step size or the strategy's safeguards."


@eqx.filter_jit
def _quadrature_error(model, q):
    return model.quadrature_error(q)


def quadrature_warning(model, q, elbo, error=None) -> str:
    """A sentence when the ELBO's Gauss-Hermite quadrature at `q` is less accurate than
    `1e-6 (1 + |ELBO|)` (its change when the nodes are doubled; `error`, if already computed,
    or `model.quadrature_error(q)`), else ''. The fit's optimum is then the optimum of an
    inaccurate ELBO, whatever its convergence test said."""
    error = float(_quadrature_error(model, q) if error is None else error)
    resolution = max(1e-6, 100 * float(jnp.finfo(model.dtype).eps))
    if not error > resolution * (1.0 + abs(float(elbo))):
        return ""
    nodes = model.likelihood.num_quadrature_points
    return (
        f"the ELBO's {nodes}-node Gauss-Hermite quadrature moves by {error:.2g} nats when the "
        "nodes are doubled at this posterior (its latent marginals are too wide for the rule), "
        "so the ELBO and its optimum are accurate only to about that. Raise the likelihood's "
        "`num_quadrature_points`; for binary labels, `BernoulliLogit`'s expectations are "
        "accurate at any variance."
    )


def fell_over_the_fit(initial_elbo, final_elbo, error=0.0) -> str:
    """A sentence if the fit ended with a lower ELBO than it started from by more than
    `1e-6 (1 + |ELBO|)` and the final ELBO's Monte Carlo standard error `error` (a step size
    too large for the problem: Adam, BLR); `""` otherwise. (A natural-gradient step whose
    curvature is a Monte Carlo average may drift the fixed-draw ELBO by ~1e-8 relative near
    its fixed point: not worth a warning.)"""
    start, end = float(initial_elbo), float(final_elbo)
    if not end < start - max(1e-6 * (1.0 + abs(start)), float(error)):
        return ""
    return (
        f"the ELBO fell over the fit, from {start:.6g} to {end:.6g}: the posterior returned is "
        "worse than the one the fit started from. The step size is likely too large for this "
        "problem: try a smaller `lr` (or `NaturalGradient`, whose steps are safeguarded)."
    )


def collapsed_step_size(history, steps: int) -> str:
    """A sentence when a fit that ran out of steps (`max_steps`) ended with its accepted step
    size below `1e-6` of the scheduled one after backoffs or retreats: its steps overshoot
    wherever they go, so the advice "raise `num_steps`" would not help; `""` otherwise."""
    if steps < 1:
        return ""
    # Read on the host: indexing the device buffers compiled a small program per index form.
    taken = float(np.asarray(history.step_size)[steps - 1])
    scheduled = float(np.asarray(history.scheduled_step_size)[steps - 1])
    retreated = int(np.sum(np.asarray(history.num_backoffs)[max(0, steps - 10) : steps])) > 0
    if not (retreated and 0 <= taken < 1e-6 * scheduled):
        return ""
    return (
        f"the step size collapsed to {taken:.2g} (scheduled {scheduled:.2g}) by backoffs and "
        "retreats: every step overshoots, so more steps will not help. The likelihood's "
        "expected gradient and curvature disagree with its ELBO (its quadrature is too coarse "
        "at these marginals: raise `num_quadrature_points`), or the likelihood is not "
        "log-concave (try `psd_correction=True` or `GaussNewton`), or `lr` is too large."
    )
