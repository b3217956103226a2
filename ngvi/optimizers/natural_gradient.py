"""Natural-gradient VI with deterministic expectations (conjugate-computation VI)."""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..gaussian import likelihood_site
from ..models import GPModel
from ..variational import SiteGaussianVariational
from .base import AbstractOptimizer, StepInfo, StepSize, step_size_at
from .safeguards import backoff_update, min_precision_of, precision_of


class AbstractNaturalStep(AbstractOptimizer):
    """The shared natural-gradient step; subclasses choose where `E_q[H]` comes from.

        site_target = (E_q[g] - E_q[H] mu,  1/2 E_q[H])
        eta_new     = (1 - rho) eta + rho (eta_prior + site_target)

    followed by the safeguards of `ngvi.optimizers.safeguards` (backoff, PSD correction,
    precision floor).
    """

    lr: eqx.AbstractVar[StepSize]
    precision_floor: eqx.AbstractVar[float]
    psd_correction: eqx.AbstractVar[bool]
    max_backoffs: eqx.AbstractVar[int]

    def __check_init__(self):
        if not callable(self.lr) and not float(self.lr) > 0:
            raise ValueError(f"`lr` must be positive, got {self.lr}.")
        if self.precision_floor < 0:
            raise ValueError(f"`precision_floor` must be >= 0, got {self.precision_floor}.")
        if self.max_backoffs < 0:
            raise ValueError(f"`max_backoffs` must be >= 0, got {self.max_backoffs}.")

    @abc.abstractmethod
    def derivatives(self, likelihood, y, mean, variance):
        """`(E_q[log p], E_q[g], E_q[H])` per data point at the marginals of `q`."""

    def init_variational(self, model):
        q = model.init_variational()
        if self.psd_correction and isinstance(q, SiteGaussianVariational):
            # The correction needs W > 0: start each site as informative as the prior's
            # marginal (W_i = 1 / K_ii), with lam1 = W m0 so that the mean stays m0.
            site_precision = 1.0 / jnp.diagonal(q.prior_covariance)
            site_precision = jnp.maximum(site_precision, self.precision_floor)
            q = q.with_parameters((site_precision * q.prior_mean, -0.5 * site_precision))
        return q

    def init(self, model, q):
        precision = precision_of(q)
        if self.precision_floor > 0 and precision.ndim != 1:
            raise ValueError(
                "`precision_floor` applies to site and diagonal families; for a dense family "
                "use backoff (the default) or `psd_correction=True`."
            )
        if self.psd_correction and isinstance(q, SiteGaussianVariational):
            try:
                smallest = float(np.min(np.asarray(precision)))
            except Exception:  # traced (e.g. under hyperparameter learning): cannot check here
                smallest = np.inf
            if not smallest > 0:
                raise ValueError(
                    "`psd_correction=True` needs every site precision W > 0 in the starting q; "
                    "start from `strategy.init_variational(model)`."
                )
        return None

    def step(self, model, q, state, step_count, key):
        mean, variance, kl = model.latent_marginals_and_kl(q)
        expected, grad, hess = self.derivatives(model.likelihood, model.y, mean, variance)
        elbo = jnp.sum(expected) - kl
        lam1, lam2 = likelihood_site(mean, grad, hess)
        target = model.natural_target(q, lam1, lam2)
        rho = step_size_at(self.lr, step_count).astype(mean.dtype)
        needs_mean = self.psd_correction or self.precision_floor > 0
        precision_mean = None
        if needs_mean:
            precision_mean = mean if isinstance(model, GPModel) else q.mean
        new_q, accepted, num_backoffs = backoff_update(
            q,
            target,
            precision_mean,
            rho,
            self.max_backoffs,
            psd_correction=self.psd_correction,
            precision_floor=self.precision_floor,
        )
        info = StepInfo(elbo, accepted, num_backoffs, min_precision_of(new_q))
        return new_q, state, info


class NaturalGradient(AbstractNaturalStep):
    """Conjugate-computation VI (Khan & Lin 2017), the natural-gradient step of the ELBO:

        site_target = (E_q[g] - E_q[H] mu,  1/2 E_q[H])
        eta_new     = (1 - lr) eta + lr (eta_prior + site_target)

    with `E_q[g]`, `E_q[H]` of the log-likelihood at the marginals of `q`, by closed form where
    one exists and Gauss-Hermite quadrature otherwise. With `lr = 1` a Gaussian likelihood
    reaches the exact posterior in one step, and log-concave likelihoods converge in a handful.
    `E_q[H]` is used as it is: for a non-log-concave likelihood (Student-t outliers) the target
    site precision `W_target = -E_q[H]` can be negative, and the safeguards decide what happens.

    **Arguments:**

    - `lr`: step size `rho` in `(0, 1]`, a float or an optax schedule `step -> rho`.
    - `precision_floor`: after the step, site (GP) or diagonal precisions are clamped
      `>= precision_floor` (default `0`: off). This moves the fixed point where it fires.
    - `psd_correction`: replace the precision update by the Riemannian correction
      `Lambda_new = Lambda - rho G + rho^2/2 G Lambda^-1 G`, `G = Lambda - Lambda_target`
      (Lin, Schmidt & Khan 2020), positive definite for any `rho`. For GP sites it acts
      elementwise on `W` and needs `W > 0`, so `init_variational` starts the sites at
      `W_i = 1 / K_ii`. Where the target is PD its fixed point is the plain one; where a
      target site precision is negative the site settles at a positive `W`.
    - `max_backoffs`: always on: if the new precision is invalid (a negative site precision,
      or a dense precision without a finite Cholesky factor) the step size is halved, up to
      `max_backoffs` times; if none is valid, `q` is kept and the accepted step size is `0`.
      `StepInfo` reports the accepted step size and the number of halvings.
    """

    lr: StepSize = 1.0
    precision_floor: float = 0.0
    psd_correction: bool = eqx.field(default=False, static=True)
    max_backoffs: int = eqx.field(default=10, static=True)

    def derivatives(self, likelihood, y, mean, variance):
        return likelihood.expected_derivatives(y, mean, variance)
