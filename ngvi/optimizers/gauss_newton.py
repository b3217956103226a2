"""Natural-gradient VI with Gauss-Newton curvature."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..likelihoods.expectations import gauss_newton_statistics
from .base import StepSize
from .natural_gradient import AbstractNaturalStep


class GaussNewton(AbstractNaturalStep):
    """The natural-gradient step with `E_q[H]` replaced by its Gauss-Newton form
    (statistical linearisation of the likelihood's conditional mean `mu(f) = E[y | f]` and
    variance `v(f) = Var[y | f]`):

        H_GN(f) = -mu'(f)^2 / v(f) <= 0,
        site_target = (E_q[g] - E_q[H_GN] mu,  1/2 E_q[H_GN])
        eta_new     = (1 - lr) eta + lr (eta_prior + site_target)

    (`likelihood.gauss_newton_derivatives`). `W_target = -E_q[H_GN] >= 0`, so the precision
    stays positive definite by construction, also for non-log-concave likelihoods such as the
    Student-t, where `E_q[H]` is indefinite. Pulled back to the whitened coordinates of a
    linear view `f = A v`, the target precision is `I + A^T diag(-E_q[H_GN]) A`, the
    Gauss-Newton matrix `J^T R^-1 J` of `ngvi.gauss_newton_precision` with `J = A`.

    The price: the fixed point is not the ELBO's stationary point (the curvature is not the
    ELBO's), so its ELBO is below the variational optimum where the two curvatures differ
    (e.g. probit; for canonical-link exponential families such as logit and Poisson-log
    `H_GN = H` and the fixed points coincide).

    A likelihood whose conditional variance is infinite (a Student-t with `df <= 2`) has no
    Gauss-Newton curvature (`H_GN = 0`): the step would be a bare gradient step with the prior
    covariance as preconditioner, which does not converge. `init` refuses it with a
    `ValueError`; use `NaturalGradient` (with `psd_correction=True` or a `precision_floor`) or
    `BLR`. (When `df` is learned, keep it above 2 or use one of those.)

    With strongly non-Gaussian likelihoods (Student-t with gross outliers) `lr = 1` can
    oscillate between two points instead of converging; `lr = 0.5` settles.

    **Arguments:** as `NaturalGradient`: `lr` (float, schedule, or `None`: 1 for full
    batches, `1 / (1 + t B / N)` for minibatches), `precision_floor`,
    `psd_correction` (rarely needed: the target is already PSD) and `max_backoffs`.
    """

    lr: StepSize | None = None
    precision_floor: float = 0.0
    psd_correction: bool = eqx.field(default=False, static=True)
    max_backoffs: int = eqx.field(default=10, static=True)
    draws_samples: ClassVar[bool] = False

    def init(self, model, q):
        if not model.likelihood.has_conditional_moments:
            raise ValueError(
                f"GaussNewton needs the likelihood's `conditional_moments` (E[y | f], "
                f"Var[y | f]); {type(model.likelihood).__name__} does not define them. Use "
                "NaturalGradient or BLR, or add `conditional_moments` to the likelihood."
            )
        _check_finite_conditional_variance(model.likelihood, q.parameters[0].dtype)
        return super().init(model, q)

    def statistics(self, model, y, marginals, key):
        return gauss_newton_statistics(model.likelihood, y, marginals)


def _check_finite_conditional_variance(likelihood, dtype) -> None:
    """Refuse a likelihood whose `Var[y | f]` is infinite: its Gauss-Newton curvature is 0.

    The variance is read at `f = 0` (with a traced likelihood, as under `jit`, there is nothing
    to read and the check is skipped)."""
    shape = (1,) if likelihood.num_latent == 1 else (1, likelihood.num_latent)
    _, variance = likelihood.conditional_moments(jnp.zeros(shape, dtype))
    if isinstance(variance, jax.core.Tracer) or bool(np.all(np.isfinite(variance))):
        return
    detail = ""
    if hasattr(likelihood, "df"):
        detail = f" (a Student-t with df = {float(likelihood.df):.3g} <= 2 has no finite variance)"
    raise ValueError(
        f"GaussNewton needs a finite conditional variance Var[y | f]; "
        f"{type(likelihood).__name__}'s is infinite{detail}, so its Gauss-Newton curvature "
        "-mu'(f)^2 / Var[y | f] is 0 and the step cannot converge. Use "
        "`ngvi.NaturalGradient(psd_correction=True)` (or with a `precision_floor`) or "
        "`ngvi.BLR`, which use the likelihood's own curvature."
    )
