"""The Bayesian learning rule: natural-gradient VI with Monte Carlo expectations."""

import equinox as eqx

from ..families import SiteStatistics
from ..likelihoods.expectations import sampled_statistics
from .base import StepSize
from .natural_gradient import AbstractNaturalStep


class BLR(AbstractNaturalStep):
    """The Bayesian learning rule for a Gaussian `q` (Khan & Rue 2023): the shared
    natural-gradient step with Monte Carlo expectations over reparameterised samples of the
    latent marginals,

        E_q[g] ~= 1/S sum_s g(f_s),    E_q[H] ~= 1/S sum_s H(f_s),    f_s = mu + R eps_s

    (Bonnet's and Price's theorems). The prior enters explicitly through the target
    `eta_prior + site`, so in mean/precision coordinates the step is `ngvi.blr_full_update`
    (full family) or `ngvi.blr_diag_update` (mean field):

        Lambda_new = (1 - rho) Lambda + rho (Lambda_0 - E_q[H])
        mu_new     = mu + rho Lambda_new^-1 (E_q[g] - Lambda_0 (mu - mu_0))

    The family is the model's (`Model(..., family="mean-field")` for the diagonal rule).

    *Curvature estimator.* `E_q[H]` is the average of exact Hessians at the samples (Price),
    not the first-order estimator `E[g (w - mu)^T] Sigma^-1`: it has lower variance near the
    optimum and, for a log-concave likelihood, every sample's Hessian is negative
    semi-definite, so the new precision is positive definite for any `rho <= 1`. Otherwise the
    shared backoff halves the step until the precision is valid. `E[H]` is never clipped: a
    clip would move the fixed point, a backoff only shortens the step.

    The ELBO `fit` records is the exact one (quadrature) where the likelihood has it, and
    convergence is judged on its average over `10` steps, since Monte Carlo noise does not
    vanish at the optimum: use a decaying schedule to converge.

    **Arguments:**

    - `lr`: step size `rho` in `(0, 1]`, a float or an optax schedule.
    - `num_samples`: Monte Carlo samples per step.
    - `delta`: evaluate `g` and `H` at the mean instead of sampling (the "delta method").
      This is Newton's method on the log joint: its fixed point is the **Laplace
      approximation** (mode and `Lambda_0 - H(mode)`), not the VI optimum.
    - `precision_floor`, `psd_correction`, `max_backoffs`: the safeguards, as in
      `NaturalGradient`.

    ```python
    schedule = optax.exponential_decay(1.0, transition_steps=50, decay_rate=0.5)
    result = ngvi.fit(model, ngvi.BLR(lr=schedule, num_samples=32), num_steps=300)
    ```
    """

    lr: StepSize = 0.5
    num_samples: int = eqx.field(static=True, default=16)
    delta: bool = eqx.field(static=True, default=False)
    precision_floor: float = 0.0
    psd_correction: bool = eqx.field(default=False, static=True)
    max_backoffs: int = eqx.field(static=True, default=10)

    def __init__(
        self,
        lr: StepSize = 0.5,
        num_samples: int = 16,
        delta: bool = False,
        precision_floor: float = 0.0,
        psd_correction: bool = False,
        max_backoffs: int = 10,
        family: str | None = None,
    ):
        if family is not None:
            raise ValueError(
                "BLR no longer chooses the family: the model owns it. Build the model with "
                "`ngvi.Model(..., family='mean-field')` for the diagonal rule (or 'full')."
            )
        if int(num_samples) < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
        self.lr = lr
        self.num_samples = int(num_samples)
        self.delta = bool(delta)
        self.precision_floor = precision_floor
        self.psd_correction = bool(psd_correction)
        self.max_backoffs = int(max_backoffs)

    def init(self, model, q):
        if not model.likelihood.differentiable:
            raise ValueError(
                f"{type(model.likelihood).__name__}'s log-likelihood is piecewise constant in f, "
                "so Monte Carlo gradients and Hessians at samples are zero and BLR would not "
                "move; use NaturalGradient, whose expectations are exact (quadrature)."
            )
        return super().init(model, q)

    @property
    def smoothing(self) -> int:
        return 1 if self.delta else 10

    @property
    def decrease_tolerance(self) -> float:
        """Monte Carlo steps move the ELBO up and down; only a fall of 1% retreats."""
        return 1e-4 if self.delta else 1e-2

    def statistics(self, model, y, marginals, key):
        grad, hess = sampled_statistics(
            model.likelihood, y, marginals, key, self.num_samples, self.delta
        )
        return SiteStatistics(model.expected_log_likelihood(y, marginals), grad, hess)
