"""A parametric model with a Gaussian prior and a user log-likelihood of the parameters.

`ParametricModel(prior, log_likelihood)` is for likelihoods that are a black box in the weights
`w` and need not factorise over data points (a neural network, an ODE, a hand-written
regression): `log_likelihood(w) = log p(y | w)` is any differentiable JAX function of `w`.
Its expectations under `q` have no quadrature, so `BLR` (Monte Carlo) is the strategy to use,
and `elbo(q)` is a Monte Carlo *estimate* with a fixed key.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .gaussian import variational_elbo_mc
from .models import AbstractModel
from .priors import GaussianPrior
from .variational import (
    DenseGaussianVariational,
    DiagonalGaussianVariational,
    GaussianVariational,
    dense_kl,
)


class ParametricModel(AbstractModel):
    """`w ~ N(m0, S0)`, `log p(y | w) = log_likelihood(w)` for a user function of `w`.

    The latent of this model is `w` itself: `latent_marginals_and_kl(q)` returns the marginals
    of `w`, and `natural_target(q, lam1, lam2)` adds sites on `w` (`lam2` a vector for diagonal
    sites or a `D x D` matrix) to the prior's natural parameters.

    **Arguments:**

    - `prior`: a `GaussianPrior` over the `D` parameters.
    - `log_likelihood`: `w (D,) -> scalar`, differentiable twice (BLR uses `jax.hessian`).
    - `num_elbo_samples`: Monte Carlo samples for `elbo` (default 2048).
    - `elbo_seed`: the fixed seed of `elbo`'s samples, so that `elbo` is a deterministic
      function of `q` (common random numbers across steps).

    **Raises:** `ValueError` before compilation if `prior` is not a `GaussianPrior`,
    `log_likelihood` is not callable, or it does not map a `(D,)` vector to a scalar.

    ```python
    def log_lik(w):
        return jnp.sum(jax.nn.log_sigmoid(s * (X @ w)))

    model = ngvi.ParametricModel(ngvi.GaussianPrior(jnp.zeros(D), 1.0), log_lik)
    result = ngvi.fit(model, ngvi.BLR(lr=0.2, num_samples=32), num_steps=200)
    ```
    """

    prior: GaussianPrior
    log_likelihood: Callable[[Float[Array, " D"]], Float[Array, ""]]
    num_elbo_samples: int = eqx.field(static=True)
    elbo_seed: int = eqx.field(static=True)

    def __init__(
        self,
        prior: GaussianPrior,
        log_likelihood: Callable[[Float[Array, " D"]], Float[Array, ""]],
        *,
        num_elbo_samples: int = 2048,
        elbo_seed: int = 0,
    ):
        if not isinstance(prior, GaussianPrior):
            raise ValueError(f"`prior` must be a GaussianPrior, got {type(prior).__name__}.")
        if not callable(log_likelihood):
            raise ValueError("`log_likelihood` must be a callable `w (D,) -> scalar`.")
        if int(num_elbo_samples) < 1:
            raise ValueError(f"`num_elbo_samples` must be >= 1, got {num_elbo_samples}.")
        try:
            out = jax.eval_shape(log_likelihood, prior.mean)
        except Exception as error:
            raise ValueError(
                f"`log_likelihood` failed on a parameter vector of shape {prior.mean.shape}: "
                f"{error}"
            ) from error
        if not (hasattr(out, "shape") and out.shape == ()):
            raise ValueError(
                "`log_likelihood` must return a scalar for a parameter vector of shape "
                f"{prior.mean.shape}; got {getattr(out, 'shape', type(out))}."
            )
        self.prior = prior
        self.log_likelihood = log_likelihood
        self.num_elbo_samples = int(num_elbo_samples)
        self.elbo_seed = int(elbo_seed)

    @property
    def likelihood(self):
        raise ValueError(
            "A ParametricModel has a black-box log-likelihood of the parameters, not a "
            "factorised `likelihood`; fit it with `ngvi.BLR`."
        )

    @property
    def X(self) -> Float[Array, "0 D"]:
        """No inputs: an empty `(0, D)` array (the data live inside `log_likelihood`)."""
        return jnp.zeros((0, self.prior.dim), self.prior.mean.dtype)

    @property
    def y(self) -> Float[Array, " 0"]:
        """No targets: an empty array carrying the model's dtype."""
        return jnp.zeros((0,), self.prior.mean.dtype)

    def init_variational(self) -> DenseGaussianVariational:
        return DenseGaussianVariational(*self.prior.natural_parameters())

    def latent_marginals_and_kl(self, q):
        mean, variance = q.marginals()
        return mean, variance, dense_kl(q, self.prior.mean, self.prior.cholesky())

    def natural_target(self, q, lam1, lam2):
        eta1, eta2 = self.prior.natural_parameters()
        if isinstance(q, DiagonalGaussianVariational):
            site2 = lam2 if lam2.ndim == 1 else jnp.diagonal(lam2)
            return q.with_parameters((eta1 + lam1, jnp.diagonal(eta2) + site2))
        site2 = jnp.diag(lam2) if lam2.ndim == 1 else lam2
        return q.with_parameters((eta1 + lam1, eta2 + site2))

    def elbo(self, q: GaussianVariational) -> Float[Array, ""]:
        """Monte Carlo *estimate* of the ELBO (the log-likelihood is a black box):

            ELBO ~= 1/S sum_s log_likelihood(mu + L eps_s) - KL(q || p)

        with `S = num_elbo_samples` draws from a fixed key and the KL exact. The error is
        `O(S^-1/2)`; the fixed key makes it a smooth deterministic function of `q`.
        """
        kl = dense_kl(q, self.prior.mean, self.prior.cholesky())
        key = jax.random.PRNGKey(self.elbo_seed)
        return variational_elbo_mc(
            self.log_likelihood, q.mean, q.scale_tril(), kl, key, self.num_elbo_samples
        )
