"""Saying why an ELBO is not finite: which data points, or which part of the prior."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np


@eqx.filter_jit
def _pointwise(model, q):
    marginals, kl = model.latent_marginals_and_kl(q)
    return model.expected_log_likelihood(model.y, marginals), kl, marginals


def describe_failure(model, q) -> str:
    """One or two sentences naming what makes the ELBO of `q` under `model` non-finite (the
    prior's covariance, the KL, or the data points whose expected log-likelihood is not finite),
    with what to do about it."""
    prior_problem = model.diagnose(q)
    if prior_problem:
        return prior_problem
    expected, kl, marginals = _pointwise(model, q)
    expected = np.asarray(expected)
    bad = np.flatnonzero(~np.isfinite(expected))
    if bad.size:
        shown = ", ".join(f"{int(i)} (y = {float(model.y[i]):g})" for i in bad[:5])
        more = "" if bad.size <= 5 else f" and {bad.size - 5} more"
        return (
            f"The expected log-likelihood is not finite at {bad.size} data point(s): {shown}"
            f"{more}. Check those targets against the likelihood's support and its `log_prob` "
            "there (for very large counts, set the prior mean near log(mean count))."
        )
    if not bool(jnp.isfinite(kl)):
        return "KL(q || p) is not finite: the posterior or the prior covariance is degenerate."
    return "Try a smaller step size or the strategy's safeguards."
