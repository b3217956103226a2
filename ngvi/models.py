"""Models: a prior over a latent function, a factorised likelihood, and the data.

`Model(prior, likelihood, X, y)` validates the data on the host (before anything is compiled)
and returns

- a `GPModel` for a `GPPrior`: the latent is `f = f(X)`, `q` is a `SiteGaussianVariational`;
- a `LinearModel` for a `GaussianPrior`: the latent is a weight vector `w`, `f = X w`, `q` is a
  `DenseGaussianVariational` (or diagonal).

Both expose what every optimizer needs: the marginals of `f_i` under `q` together with
`KL(q || p)` from one factorisation, the exact ELBO, and `natural_target`, the family member
`eta_prior + site` for likelihood sites on `f`.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._validation import check_finite, is_concrete
from .likelihoods import AbstractLikelihood
from .priors import GaussianPrior, GPPrior
from .variational import (
    DenseGaussianVariational,
    DiagonalGaussianVariational,
    GaussianVariational,
    SiteGaussianVariational,
    dense_kl,
)
from .whitened import AbstractWhitenedVariational


class AbstractModel(eqx.Module):
    """A prior, a factorised likelihood `prod_i p(y_i | f_i)` and data."""

    likelihood: eqx.AbstractVar[AbstractLikelihood]
    X: eqx.AbstractVar[Float[Array, "n d"]]
    y: eqx.AbstractVar[Float[Array, " n"]]

    @abc.abstractmethod
    def init_variational(self) -> GaussianVariational:
        """The starting point `q = p` (the prior)."""

    @abc.abstractmethod
    def latent_marginals_and_kl(
        self, q: GaussianVariational
    ) -> tuple[Float[Array, " n"], Float[Array, " n"], Float[Array, ""]]:
        """`(E_q[f_i], Var_q[f_i], KL(q || p))`, sharing one factorisation."""

    @abc.abstractmethod
    def natural_target(
        self, q: GaussianVariational, lam1: Float[Array, " n"], lam2: Float[Array, " n"]
    ) -> GaussianVariational:
        """The family member with natural parameters `eta_prior + site(lam1, lam2)`, the site
        being Gaussian in `f` (mapped through `X` for a linear model)."""

    def elbo(self, q: GaussianVariational) -> Float[Array, ""]:
        """The exact ELBO `sum_i E_q[log p(y_i | f_i)] - KL(q || p)` (closed form or
        Gauss-Hermite quadrature; never Monte Carlo)."""
        mean, variance, kl = self.latent_marginals_and_kl(q)
        return jnp.sum(self.likelihood.expected_log_prob(self.y, mean, variance)) - kl

    @property
    def num_data(self) -> int:
        return self.y.shape[0]


class GPModel(AbstractModel):
    """Gaussian-process model: `f ~ GP(m, k)`, `y_i ~ p(y_i | f(x_i))`."""

    prior: GPPrior
    likelihood: AbstractLikelihood
    X: Float[Array, "n d"]
    y: Float[Array, " n"]

    def variational(self, lam1: Float[Array, " n"], lam2: Float[Array, " n"]):
        """The site posterior with sites `(lam1, lam2)` on this model's prior."""
        return SiteGaussianVariational(
            self.prior.mean_vector(self.X), self.prior.covariance(self.X), lam1, lam2
        )

    def init_variational(self):
        zeros = jnp.zeros(self.num_data, dtype=self.y.dtype)
        return self.variational(zeros, zeros)

    def prior_cholesky(self) -> Float[Array, "n n"]:
        """Lower Cholesky factor `L_K` of `K = k(X, X) + jitter * I`, for the whitened families
        (`f = m0 + L_K u`). The site family never needs it.

        **Raises:** `ValueError` when the factor is not finite, i.e. `K` is not numerically
        positive definite at this precision (checked when the value is concrete; under tracing,
        e.g. while learning hyperparameters, a NaN ends the fit as `failed` instead).
        """
        factor = jnp.linalg.cholesky(self.prior.covariance(self.X)).astype(self.y.dtype)
        if is_concrete(factor) and not bool(jnp.all(jnp.isfinite(factor))):
            raise ValueError(
                f"The Cholesky factor of k(X, X) + jitter * I is not finite in {factor.dtype}: "
                "K is not numerically positive definite. Increase `jitter` or use float64."
            )
        return factor

    def latent_marginals_and_kl(self, q):
        if isinstance(q, AbstractWhitenedVariational):
            return q.latent_marginals_and_kl()
        factors = q.factorise()
        return factors.mean, factors.variance, factors.kl

    def natural_target(self, q, lam1, lam2):
        return q.with_parameters((lam1, lam2))


class LinearModel(AbstractModel):
    """Parametric model with a Gaussian prior on weights: `w ~ N(m0, S0)`, `f = X w`
    (Bayesian linear / logistic / Poisson regression on a design matrix `X`)."""

    prior: GaussianPrior
    likelihood: AbstractLikelihood
    X: Float[Array, "n D"]
    y: Float[Array, " n"]
    diagonal: bool = eqx.field(static=True, default=False)

    def init_variational(self):
        eta1, eta2 = self.prior.natural_parameters()
        if self.diagonal:
            return DiagonalGaussianVariational(eta1, jnp.diagonal(eta2))
        return DenseGaussianVariational(eta1, eta2)

    def latent_marginals_and_kl(self, q):
        if isinstance(q, AbstractWhitenedVariational):
            return q.latent_marginals_and_kl(self.X)
        mean, variance = q.projected_marginals(self.X)
        return mean, variance, dense_kl(q, self.prior.mean, self.prior.cholesky())

    def natural_target(self, q, lam1, lam2):
        prior_eta1, prior_eta2 = self.prior.natural_parameters()
        eta1 = prior_eta1 + self.X.T @ lam1
        if self.diagonal:
            # Mean-field natural gradient (Khan & Rue 2023, diagonal BLR): only the diagonal of
            # the curvature `Lambda_0 - H_w` multiplies `mu` in eta1; its off-diagonal part times
            # `mu` joins the gradient, `eta1 += offdiag(H_w - Lambda_0) mu`.
            mean, hess_scale = q.mean, 2.0 * lam2
            curvature_mean = self.X.T @ (hess_scale * (self.X @ mean)) + 2.0 * prior_eta2 @ mean
            curvature_diag = (self.X**2).T @ hess_scale + 2.0 * jnp.diagonal(prior_eta2)
            eta1 = eta1 + curvature_mean - curvature_diag * mean
            return q.with_parameters((eta1, jnp.diagonal(prior_eta2) + (self.X**2).T @ lam2))
        return q.with_parameters((eta1, prior_eta2 + self.X.T @ (lam2[:, None] * self.X)))


def _as_inputs(X, name: str = "X") -> np.ndarray:
    array = check_finite(X, name)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n,) or (n, d); got shape {array.shape}.")
    return array


def Model(
    prior: GPPrior | GaussianPrior,
    likelihood: AbstractLikelihood,
    X,
    y,
    *,
    diagonal: bool = False,
) -> GPModel | LinearModel:
    """Build a model from a prior, a likelihood and data, checking the data first.

    **Arguments:**

    - `prior`: a `GPPrior` (latent function over inputs `X`) or a `GaussianPrior` over the
      `D` weights of a linear predictor `f = X w`.
    - `likelihood`: any `AbstractLikelihood`; its `prepare_targets` checks `y`'s support.
    - `X`: inputs `(n,)` or `(n, d)`; for a `GaussianPrior`, the `(n, D)` design matrix.
    - `y`: targets `(n,)`.
    - `diagonal`: with a `GaussianPrior`, use a mean-field (diagonal) family.

    **Raises:** `ValueError` naming the problem (NaN/inf, mismatched shapes, labels outside the
    likelihood's support, a kernel matrix that is not positive definite) before any compilation.

    ```python
    model = ngvi.Model(ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X, y)
    ```
    """
    if not isinstance(likelihood, AbstractLikelihood):
        raise TypeError(f"`likelihood` must be an AbstractLikelihood, got {type(likelihood)}.")
    inputs = _as_inputs(X)
    targets = check_finite(y, "y")
    if targets.ndim == 2 and targets.shape[1] == 1:
        targets = targets[:, 0]
    if targets.ndim != 1:
        raise ValueError(f"`y` must have shape (n,); got shape {targets.shape}.")
    if targets.shape[0] != inputs.shape[0]:
        raise ValueError(
            f"`X` and `y` must have the same number of rows; got X with {inputs.shape[0]} "
            f"and y with {targets.shape[0]}."
        )
    targets = likelihood.prepare_targets(targets)
    dtype = jnp.zeros(()).dtype
    X_jax, y_jax = jnp.asarray(inputs, dtype), jnp.asarray(targets, dtype)
    if isinstance(prior, GPPrior):
        model = GPModel(prior, likelihood, X_jax, y_jax)
        _check_kernel_matrix(model)
        return model
    if isinstance(prior, GaussianPrior):
        if inputs.shape[1] != prior.dim:
            raise ValueError(
                f"The design matrix `X` has {inputs.shape[1]} columns but the GaussianPrior has "
                f"dimension {prior.dim}."
            )
        return LinearModel(prior, likelihood, X_jax, y_jax, diagonal)
    raise TypeError(f"`prior` must be a GPPrior or a GaussianPrior, got {type(prior)}.")


def _check_kernel_matrix(model: GPModel) -> None:
    covariance = np.asarray(model.prior.covariance(model.X), dtype=float)
    if not np.all(np.isfinite(covariance)):
        raise ValueError("The kernel matrix k(X, X) has NaN/inf entries; check the kernel.")
    try:
        np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError:
        hint = ""
        dtype = model.X.dtype
        if jnp.finfo(dtype).bits < 64:
            # Rounding K to float32 perturbs it by ~eps * n * max k(x, x), which swamps a
            # jitter of 1e-6 on a few hundred close inputs.
            suggested = (
                float(jnp.finfo(dtype).eps)
                * covariance.shape[0]
                * np.abs(np.diagonal(covariance)).max()
            )
            hint = (
                f" In {dtype} the rounding of K alone is about {suggested:.1e}: use a jitter "
                "above that, or enable float64 (`jax.config.update('jax_enable_x64', True)`)."
            )
        raise ValueError(
            "The kernel matrix k(X, X) + jitter * I is not positive definite; the kernel is not "
            "a valid covariance function or `jitter` is too small for these inputs." + hint
        ) from None
