"""The Bayesian learning rule: natural-gradient VI with Monte Carlo expectations."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl

from ..gaussian import blr_diag_update, blr_full_update, likelihood_site
from ..models import GPModel, LinearModel
from ..parametric import ParametricModel
from ..variational import (
    DenseGaussianVariational,
    DiagonalGaussianVariational,
    SiteGaussianVariational,
)
from ..whitened import WhitenedDiagonalGaussianVariational
from .base import AbstractOptimizer, StepInfo, StepSize, step_size_at
from .safeguards import backoff_update


def _weight_log_likelihood(model):
    """`w -> log p(y | w)` for a weight-space model."""
    if isinstance(model, ParametricModel):
        return model.log_likelihood
    return lambda w: jnp.sum(model.likelihood.log_prob(model.X @ w, model.y))


def _site_derivatives(likelihood, y, f):
    """Elementwise `d/df log p(y_i | f_i)` and `d^2/df^2` of a factorised likelihood."""

    def grad(f):
        return jax.grad(lambda f: jnp.sum(likelihood.log_prob(f, y)))(f)

    return grad(f), jax.grad(lambda f: jnp.sum(grad(f)))(f)


class BLR(AbstractOptimizer):
    """The Bayesian learning rule for a Gaussian `q` (Khan & Rue 2023), with Monte Carlo
    expectations of the log-likelihood's derivatives over reparameterised samples of `q`:

        E_q[g] ~= 1/S sum_s g(w_s),    E_q[H] ~= 1/S sum_s H(w_s),    w_s = mu + L eps_s

    (Bonnet's and Price's theorems). The prior enters explicitly
    (`ngvi.blr_full_update` / `ngvi.blr_diag_update`):

        Lambda_new = (1 - rho) Lambda + rho (Lambda_0 - E_q[H])
        mu_new     = mu + rho Lambda_new^-1 (E_q[g] - Lambda_0 (mu - mu_0))

    which is `eta_new = (1 - rho) eta + rho (eta_prior + site_target)` in natural parameters.

    *Curvature estimator.* `E_q[H]` is the average of exact Hessians at the samples (Price),
    not the first-order estimator `E[g (w - mu)^T] Sigma^-1`: it has lower variance near the
    optimum (no `Sigma^-1`-weighted noise) and, for a log-concave likelihood, every sample's
    Hessian is negative semi-definite, so the new precision is positive definite for any
    `rho <= 1`. Otherwise the step size is halved (up to `max_backoffs` times; `StepInfo`
    reports how many and the step size accepted) until the new precision is valid (a finite
    Cholesky factor, positive diagonal precisions, site precisions `W >= 0`); if none is,
    `q` is kept and the accepted step size is `0` (`ngvi.fit` then stops as `stalled`).

    *Models.*

    - `GPModel`, `family="full"` (the site form, `SiteGaussianVariational`): the likelihood
      factorises, so samples of the marginals `f_i ~ N(mu_i, Sigma_ii)` suffice; per-site
      `E[g_i]`, `E[H_ii]` give the target sites `lam1 = E[g] - E[H] mu`, `lam2 = 1/2 E[H]`,
      and the step is `(1 - rho) sites + rho target`. Site precisions must stay `W >= 0`
      (`B = I + W^1/2 K W^1/2` needs `W^1/2`); a step that would make one negative (a
      non-log-concave likelihood, where a Monte Carlo `E[H_ii]` can be positive) is halved by
      the shared backoff (`ngvi.optimizers.safeguards.backoff_update`, as in
      `NaturalGradient`) until every `W_i >= 0`. `E[H]` is never clipped: a clip would move
      the fixed point, a backoff only shortens the step. If no step size is valid `q` is kept
      (once a site's `W_i` is near 0 and its sampled target is negative this can happen
      repeatedly; for non-log-concave likelihoods prefer `GaussNewton` or
      `NaturalGradient(psd_correction=True)`).
    - `GPModel`, `family="diagonal"` (`ngvi.WhitenedDiagonalGaussianVariational`): the GP as
      the linear model `f = m0 + L_K u`, `L_K = chol(K)` (`K` with jitter), prior
      `u ~ N(0, I)`, and a mean-field `q(u) = N(m, diag(s)^-1)`. Since the likelihood
      factorises, `H_u = L_K^T diag(H_f) L_K`, so with Monte Carlo `E[g_f]`, `E[H_f]` at the
      marginals of `f`

          E[g_u] = L_K^T E[g_f],        E[diag H_u]_d = sum_i L_K[i, d]^2 E[H_f]_i

      and `ngvi.blr_diag_update` with prior `N(0, I)` moves `(m, s)`. Its fixed point is the
      stationary point of the exact mean-field ELBO, `m = E[g_u]`, `s = 1 - E[diag H_u]`,
      whose ELBO is below the full-Gaussian optimum (the mean field drops the posterior
      correlations of `u`).
    - `LinearModel` (`f = X w`) and `ngvi.ParametricModel` (a user `log_likelihood(w)`):
      samples `w_s ~ q`, gradients and `jax.hessian` of `log p(y | w)` at each.
      `family="diagonal"` moves a `DiagonalGaussianVariational` (using `diag E_q[H]`)
      whichever family the model was built with.

    `StepInfo.elbo` is `model.elbo(q)` of the input `q`: exact for GP and linear models, the
    model's fixed-key Monte Carlo estimate for a `ParametricModel`.

    **Arguments:**

    - `lr`: step size `rho` in `(0, 1]`, a float or an optax schedule. Monte Carlo noise
      does not vanish at the optimum, so use a decaying schedule to converge.
    - `family`: `"full"` (site form for a GP, dense for weights) or `"diagonal"`
      (mean-field: over the whitened `u` for a GP, over `w` otherwise).
    - `num_samples`: Monte Carlo samples per step.
    - `delta`: evaluate `g` and `H` at the mean instead of sampling (the "delta method").
      This is Newton's method on the log joint: its fixed point is the **Laplace
      approximation** (mode and `Lambda_0 - H(mode)`), not the VI optimum.
    - `max_backoffs`: how many times a step may be halved to keep the precision PD.

    ```python
    schedule = optax.exponential_decay(1.0, transition_steps=50, decay_rate=0.5)
    result = ngvi.fit(model, ngvi.BLR(lr=schedule, num_samples=32), num_steps=300, tol=0.0)
    mean_field = ngvi.fit(model, ngvi.BLR(lr=schedule, family="diagonal"), 300, tol=0.0)
    ngvi.predict(model, mean_field.q, X_new)  # a GP's mean-field posterior predicts too
    ```
    """

    lr: StepSize = 0.5
    family: str = eqx.field(static=True, default="full")
    num_samples: int = eqx.field(static=True, default=16)
    delta: bool = eqx.field(static=True, default=False)
    max_backoffs: int = eqx.field(static=True, default=10)

    def __check_init__(self):
        if self.family not in ("full", "diagonal"):
            raise ValueError(f"`family` must be 'full' or 'diagonal', got {self.family!r}.")
        if self.num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {self.num_samples}.")
        if self.max_backoffs < 0:
            raise ValueError(f"`max_backoffs` must be >= 0, got {self.max_backoffs}.")
        if not callable(self.lr) and not 0.0 < float(self.lr) <= 1.0:
            raise ValueError(f"`lr` must be in (0, 1], got {self.lr}.")

    def init_variational(self, model):
        if isinstance(model, GPModel):
            if self.family == "full":
                return model.init_variational()
            dtype = model.y.dtype
            prior_mean = jnp.asarray(model.prior.mean_vector(model.X), dtype)
            prior_scale = model.prior_cholesky()
            return WhitenedDiagonalGaussianVariational.at_prior(prior_mean, prior_scale)
        prior = model.prior
        if self.family == "full":
            return DenseGaussianVariational(*prior.natural_parameters())
        precision = jnp.diagonal(prior.precision())
        return DiagonalGaussianVariational(precision * prior.mean, -0.5 * precision)

    def _check_family(self, model, q):
        if isinstance(model, GPModel):
            full = self.family == "full"
            expected = SiteGaussianVariational if full else WhitenedDiagonalGaussianVariational
        elif isinstance(model, (LinearModel, ParametricModel)):
            full = self.family == "full"
            expected = DenseGaussianVariational if full else DiagonalGaussianVariational
        else:
            raise ValueError(f"BLR does not support models of type {type(model).__name__}.")
        if q is not None and not isinstance(q, expected):
            raise ValueError(
                f"BLR(family={self.family!r}) on a {type(model).__name__} moves a "
                f"{expected.__name__}, got {type(q).__name__}; start from "
                "`BLR(...).init_variational(model)`."
            )

    def init(self, model, q):
        self._check_family(model, q)
        return None

    def step(self, model, q, state, step_count, key):
        dtype = q.parameters[0].dtype
        rho = jnp.asarray(step_size_at(self.lr, step_count), dtype)
        if isinstance(model, GPModel) and self.family == "full":
            return self._site_step(model, q, state, rho, key)
        if isinstance(model, GPModel):
            return self._whitened_diagonal_step(model, q, state, rho, key)
        return self._weight_step(model, q, state, rho, key)

    def _samples(self, mean, scale, key):
        if self.delta:
            return mean[None]
        noise = jax.random.normal(key, (self.num_samples,) + mean.shape, dtype=mean.dtype)
        return mean + scale(noise)

    def _latent_derivatives(self, model, q, key):
        """ELBO of `q` and Monte Carlo `E_q[g_f]`, `E_q[H_f]` per site, from the marginals."""
        mean, variance, kl = model.latent_marginals_and_kl(q)
        elbo = jnp.sum(model.likelihood.expected_log_prob(model.y, mean, variance)) - kl
        f = self._samples(mean, lambda eps: jnp.sqrt(variance) * eps, key)
        grads, hessians = jax.vmap(lambda f: _site_derivatives(model.likelihood, model.y, f))(f)
        return elbo, mean, jnp.mean(grads, axis=0), jnp.mean(hessians, axis=0)

    def _site_step(self, model, q, state, rho, key):
        elbo, mean, grad, hess = self._latent_derivatives(model, q, key)
        target = q.with_parameters(likelihood_site(mean, grad, hess))
        new_q, rho, num_backoffs = backoff_update(q, target, None, rho, self.max_backoffs)
        min_precision = jnp.min(new_q.site_precision)
        return new_q, state, StepInfo(elbo, rho, num_backoffs, min_precision)

    def _whitened_diagonal_step(self, model, q, state, rho, key):
        elbo, _, grad_f, hess_f = self._latent_derivatives(model, q, key)
        scale = q.prior_scale
        grad = scale.T @ grad_f  # E[g_u] = L^T E[g_f]
        hess_diag = (scale**2).T @ hess_f  # diag(L^T diag(E[H_f]) L)
        dim = grad.shape[0]
        prior_mean = jnp.zeros(dim, grad.dtype)
        prior_precision = jnp.eye(dim, dtype=grad.dtype)
        new_q, rho, num_backoffs, min_precision = self._moment_update(
            q, q.whitened_mean, q.precision, grad, hess_diag, prior_mean, prior_precision, rho
        )
        return new_q, state, StepInfo(elbo, rho, num_backoffs, min_precision)

    def _weight_step(self, model, q, state, rho, key):
        elbo = model.elbo(q)
        log_lik = _weight_log_likelihood(model)
        full = isinstance(q, DenseGaussianVariational)
        mean, precision = q.mean, q.precision
        if full:
            factor = jnp.linalg.cholesky(precision)
            scale = lambda eps: jsl.solve_triangular(factor.T, eps.T, lower=False).T  # noqa: E731
        else:
            scale = lambda eps: eps / jnp.sqrt(precision)  # noqa: E731
        w = self._samples(mean, scale, key)
        grad = jnp.mean(jax.vmap(jax.grad(log_lik))(w), axis=0)
        hess = jnp.mean(jax.vmap(jax.hessian(log_lik))(w), axis=0)
        if not full:
            hess = jnp.diagonal(hess)
        prior_mean, prior_precision = model.prior.mean, model.prior.precision()
        new_q, rho, num_backoffs, min_precision = self._moment_update(
            q, mean, precision, grad, hess, prior_mean, prior_precision, rho
        )
        return new_q, state, StepInfo(elbo, rho, num_backoffs, min_precision)

    def _moment_update(self, q, mean, precision, grad, hess, prior_mean, prior_precision, rho):
        """`blr_full_update` (dense `precision`) or `blr_diag_update` (a vector) with step
        backoff; returns `(q_new, accepted_rho, num_backoffs, min_precision)`."""
        full = precision.ndim == 2

        def update(rho):
            if full:
                new_mean, new_precision = blr_full_update(
                    mean, precision, grad, hess, prior_mean, prior_precision, rho
                )
                factor_diag = jnp.diagonal(jnp.linalg.cholesky(new_precision))
                ok = jnp.all(jnp.isfinite(factor_diag) & (factor_diag > 0))
            else:
                new_mean, new_precision = blr_diag_update(
                    mean, precision, grad, hess, prior_mean, prior_precision, rho
                )
                ok = jnp.all(jnp.isfinite(new_precision) & (new_precision > 0))
            return new_mean, new_precision, ok & jnp.all(jnp.isfinite(new_mean))

        def halve(carry):
            backoffs, rho, *_ = carry
            return (backoffs + 1, 0.5 * rho, *update(0.5 * rho))

        def rejected(carry):
            backoffs, _, _, _, ok = carry
            return ~ok & (backoffs < self.max_backoffs)

        backoffs, rho, new_mean, new_precision, ok = jax.lax.while_loop(
            rejected, halve, (jnp.asarray(0), rho, *update(rho))
        )
        new_mean = jnp.where(ok, new_mean, mean)
        new_precision = jnp.where(ok, new_precision, precision)
        rho = jnp.where(ok, rho, jnp.zeros_like(rho))
        if full:
            eta1 = new_precision @ new_mean
        else:
            eta1 = new_precision * new_mean
        new_q = q.with_parameters((eta1, -0.5 * new_precision))
        diagonal = jnp.diagonal(new_precision) if full else new_precision
        return new_q, rho, backoffs, jnp.min(diagonal)
