"""Natural-gradient VI with Gauss-Newton curvature."""

import equinox as eqx

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

    def init(self, model, q):
        if not model.likelihood.has_conditional_moments:
            raise ValueError(
                f"GaussNewton needs the likelihood's `conditional_moments` (E[y | f], "
                f"Var[y | f]); {type(model.likelihood).__name__} does not define them. Use "
                "NaturalGradient or BLR, or add `conditional_moments` to the likelihood."
            )
        return super().init(model, q)

    def statistics(self, model, y, marginals, key):
        return gauss_newton_statistics(model.likelihood, y, marginals)
