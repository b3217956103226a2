"""The shared natural-gradient step, and natural gradients with deterministic expectations."""

import abc
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..families import AbstractVariational, Marginals, SiteStatistics
from ..likelihoods.expectations import expected_statistics
from .base import (
    AbstractOptimizer,
    StepInfo,
    StepSize,
    check_step_size,
    default_step_size,
    step_size_at,
)
from .safeguards import backoff_update

MONTE_CARLO_FALL = 1e-4
"""The relative fall of the ELBO below which a natural step on Monte Carlo statistics does not
retreat (`AbstractNaturalStep.fall_tolerance`)."""


class Retreat(eqx.Module):
    """The state of the natural step: the point the last step moved from, its target, ELBO
    and coordinate mean, the trust factor that multiplies the step size, and the step size
    the last step accepted (after backoff)."""

    q: AbstractVariational
    target: tuple[Array, Array]
    elbo: Float[Array, ""]
    mean: Array | None
    trust: Float[Array, ""]
    step_size: Float[Array, ""]


class AbstractNaturalStep(AbstractOptimizer):
    """The one natural-gradient step every curvature-based strategy shares:

        statistics  = E_q[log p], E_q[g], E_q[H] per point      (the curvature estimator)
        target      = model.natural_target(q, ..., statistics, N / B)
                    = eta_prior + (N / B) site(E_q[g] - E_q[H] mu, 1/2 E_q[H])
        eta_new     = (1 - rho) eta + rho target                 (`ngvi.damped_natural_update`)

    followed by the safeguards of `ngvi.optimizers.safeguards` (backoff, PSD correction,
    precision floor) and one more: *retreat*. If the ELBO of `q` is below that of the point the
    previous step moved from by more than `decrease_tolerance * (1 + |ELBO|)`, the step is
    taken again from that point with half the trust (the step size is `trust * rho`; full-batch
    steps only, since a minibatch ELBO is a noisy estimate; an ELBO of `-inf` after a finite
    one retreats too) and at most half the step size the rejected step accepted, so a retreat
    never proposes the rejected point again (had backoff shortened the rejected step, halving
    the trust alone could back off to that same point, and its repeated ELBO would pass for
    convergence; when `fit` learns hyperparameters, that point's ELBO is re-evaluated under
    the moved model, `after_model_moved`); each accepted step grows the trust by a quarter,
    back towards 1. A natural-gradient step with a small enough step size increases the ELBO,
    so this stops divergence (e.g. the mean-field rule on strongly correlated posteriors)
    without changing the fixed point; `StepInfo` counts a retreat as a backoff and reports the
    step size actually taken. Subclasses say only where the statistics come from
    (`statistics`).
    """

    lr: eqx.AbstractVar[StepSize | None]
    precision_floor: eqx.AbstractVar[float]
    psd_correction: eqx.AbstractVar[bool]
    max_backoffs: eqx.AbstractVar[int]

    def __check_init__(self):
        check_step_size(self.lr, upper=1.0)
        if not self.precision_floor >= 0:
            raise ValueError(f"`precision_floor` must be >= 0, got {self.precision_floor}.")
        if self.max_backoffs < 0:
            raise ValueError(f"`max_backoffs` must be >= 0, got {self.max_backoffs}.")

    retreats_from_minus_infinity: ClassVar[bool] = True
    traced_step_size: ClassVar[bool] = True
    draws_samples: ClassVar[bool] = True
    """Whether `statistics` draws random numbers from `key` (then they are computed over the
    whole batch at once, never chunk by chunk)."""

    @abc.abstractmethod
    def statistics(self, model, y, marginals: Marginals, key) -> SiteStatistics:
        """`E_q[log p]`, `E_q[g]` and the curvature `E_q[H]` per point at the marginals."""

    @property
    def decrease_tolerance(self) -> float:
        """The relative fall of the ELBO that makes a step retreat (see the class docstring;
        never below 100 machine epsilons). Loose here, since a strategy whose fixed point is
        not the ELBO's maximiser (Gauss-Newton) may lower the ELBO on its way there."""
        return 1e-4

    def fall_tolerance(self, model) -> float:
        """`decrease_tolerance`, raised to `MONTE_CARLO_FALL` (1e-4) where the likelihood's
        statistics are Monte Carlo: their fixed point lies a sampling error away from the
        maximiser of the ELBO the step reports, so falls that small are not overshoots. (At
        1e-10 a Softmax fit that had reached its fixed point retreated 79 times in 300 steps
        and ran out of steps; at 1e-4 it converged in 14 to the same ELBO.)"""
        if model.likelihood.statistics_are_derivatives:
            return self.decrease_tolerance
        return max(self.decrease_tolerance, MONTE_CARLO_FALL)

    @property
    def _needs_mean(self) -> bool:
        return self.psd_correction or self.precision_floor > 0

    def init(self, model, q):
        if self.precision_floor > 0 and not q.diagonal_precision:
            raise ValueError(
                "`precision_floor` applies to site and diagonal families; for a full "
                "precision matrix use backoff (the default) or `psd_correction=True`."
            )
        if self.psd_correction:
            q = q.prepared_for_psd_correction(model)
        dtype = q.parameters[0].dtype
        mean = None
        if self._needs_mean:
            mean = q.coordinate_mean(model.latent_marginals_and_kl(q)[0])
        one = jnp.ones((), dtype)
        state = Retreat(q, q.parameters, jnp.asarray(-jnp.inf, dtype), mean, one, one)
        return q, state

    def after_model_moved(self, model, state: Retreat, batch) -> Retreat:
        """Re-evaluate the ELBO of the point the last step moved from under the moved model, so
        the next step's retreat test compares two ELBOs of one model. (Comparing across models,
        an Adam step on the hyperparameters that lowered the ELBO counted as an overshoot, and
        the retreats shrank the step size to 1e-41, leaving `q` stale: 7e-4 nats below the
        exact posterior of the learned Gaussian model.) Minibatch steps never retreat, so
        they skip the evaluation."""
        if batch is not None:
            return state
        elbo = model.elbo(state.q).astype(state.elbo.dtype)
        return eqx.tree_at(lambda s: s.elbo, state, elbo)

    def step(self, model, q, state: Retreat, batch, step_count, key):
        scale = model.batch_scale(batch)

        def statistics(y, marginals):
            return self.statistics(model, y, marginals, key)

        # Deterministic statistics may be computed chunk by chunk, fused with the marginals
        # and the pullback; sampled ones keep one draw over the whole batch.
        log_prob, kl, target, marginals = model.statistics_and_target(
            q, batch, statistics, scale, fuse=not self.draws_samples
        )
        elbo = scale * log_prob - kl
        mean = q.coordinate_mean(marginals) if self._needs_mean else None
        dtype = q.parameters[0].dtype
        resolution = 100 * jnp.finfo(dtype).eps  # the ELBO's rounding
        margin = jnp.maximum(self.fall_tolerance(model), resolution) * (1.0 + jnp.abs(state.elbo))
        # A minibatch ELBO is a noisy estimate on a different batch each step: no retreat.
        # An ELBO of -inf after a finite one (an overshoot: Poisson counts of ~500 from a zero
        # prior mean, where lr = 1's second step put the rate at exp(423)) retreats too, and
        # the loop lets it (`retreats_from_minus_infinity`); NaN compares False and ends the fit.
        retreat = (elbo < state.elbo - margin) & (batch is None)
        here = Retreat(q, target, elbo, mean, jnp.minimum(1.25 * state.trust, 1.0), state.step_size)
        back = Retreat(
            state.q, state.target, state.elbo, state.mean, 0.5 * state.trust, state.step_size
        )
        base = jax.tree.map(lambda a, b: jnp.where(retreat, a, b), back, here)
        if self.lr is None:
            scheduled = default_step_size(step_count, scale)
        else:
            scheduled = step_size_at(self.lr, step_count)
        scheduled = jnp.maximum(scheduled.astype(dtype), 0.0)
        rho = base.trust * scheduled
        rho = jnp.where(retreat, jnp.minimum(rho, 0.5 * state.step_size), rho)
        new_q, accepted, num_backoffs = backoff_update(
            base.q,
            base.target,
            base.mean,
            rho,
            self.max_backoffs,
            psd_correction=self.psd_correction,
            precision_floor=self.precision_floor,
        )
        num_backoffs = num_backoffs + retreat.astype(num_backoffs.dtype)
        info = StepInfo(elbo, accepted, num_backoffs, new_q.min_precision(), scheduled)
        return new_q, eqx.tree_at(lambda s: s.step_size, base, accepted), info


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

    - `lr`: step size `rho` in `(0, 1]`, a float or an optax schedule `step -> rho`. The
      default (`None`) is `1` for full-batch steps and `1 / (1 + t B / N)` for minibatches of
      `B` of `N` points (`ngvi.optimizers.base.default_step_size`).
    - `precision_floor`: after the step, site (GP) or diagonal precisions are clamped
      `>= precision_floor` (default `0`: off). This moves the fixed point where it fires.
    - `psd_correction`: replace the precision update by the Riemannian correction
      `Lambda_new = Lambda - rho G + rho^2/2 G Lambda^-1 G`, `G = Lambda - Lambda_target`
      (Lin, Schmidt & Khan 2020), positive definite for any `rho`. For GP sites it acts
      elementwise on `W` and needs `W > 0`, so `init` starts empty sites at `W_i = 1 / K_ii`.
      Where the target is PD its fixed point is the plain one; where a target site precision
      is negative the site settles at a positive `W`.
    - `max_backoffs`: always on: if the new precision is invalid (a negative site precision,
      or a precision matrix without a finite Cholesky factor) the step size is halved, up to
      `max_backoffs` times; if none is valid, `q` is kept and the accepted step size is `0`.
    """

    lr: StepSize | None = None
    precision_floor: float = 0.0
    psd_correction: bool = eqx.field(default=False, static=True)
    max_backoffs: int = eqx.field(default=10, static=True)
    draws_samples: ClassVar[bool] = False

    @property
    def decrease_tolerance(self) -> float:
        """Any fall of the ELBO beyond rounding retreats: the fixed point is the ELBO's
        stationary point and the expectations are deterministic, so a fall is an overshoot.
        (A looser margin let `lr = 1` cycle forever on a logit GP with signal variance 1e3:
        each fall of up to 1e-2 nats was accepted and the trust grew back to 1.)"""
        return 1e-10

    def statistics(self, model, y, marginals, key):
        return expected_statistics(model.likelihood, y, marginals)
