"""`SparseModel`: a GP through `M` inducing values, fitted by full-batch or minibatch steps."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._data import Data, as_inputs, prepare_data
from ..families.views import over_latents
from ..likelihoods import AbstractLikelihood
from ..parameters import learnable
from ..priors import GPPrior
from .base import AbstractModel, check_family, check_latents
from .chunks import chunked_rows, chunked_sum
from .inducing import kmeans_inducing


class SparseModel(AbstractModel):
    """A sparse variational GP (Titsias 2009; Hensman, Fusi & Lawrence 2013): the posterior of
    `u = f(Z)` at `M` inducing inputs `Z`, and `f(x) | u` from the prior's conditional.

    In whitened coordinates `u = m0 + L_u v`, `L_u = chol(K_uu + jitter I)`, `v ~ N(0, I)`:

        f(x) = m0 + a(x)^T v + e(x),   a(x) = L_u^-1 k_u(x),   Var e(x) = k(x, x) - ||a(x)||^2

    (the jitter sits on `K_uu` only). `q(v)` is the model's family (`"full"`: natural
    parameters of a full Gaussian; `"mean-field"`), so the natural-gradient step is the dense
    one pulled back through `a`: `S^-1 = I + (N / B) sum_b a_b W_b a_b^T` for a batch of `B`.
    One step costs one `M x M` Cholesky plus `O(B M^2)`. Full-data passes (`elbo`, a full-batch
    step, `predict`) stream over the rows in chunks of `chunk_size`, so memory is
    `O(chunk_size * M)`, never `N x M`.

    **Arguments:**

    - `prior`: a `GPPrior` (its jitter is added to `K_uu` only).
    - `likelihood`, `X`, `y`: as for `ngvi.Model`.
    - `inducing`: the inducing inputs `(M, d)`, or an integer `M`: then `Z` are the k-means
      centres of `X` (reproducible for a `seed`; see `ngvi.models.inducing`). `Z` is
      `learnable`: `fit(..., learn=...)` moves it by default.
    - `family`: `"full"` (default) or `"mean-field"`.
    - `chunk_size`: rows per chunk of a full-data pass.
    - `seed`: for choosing `Z` when `inducing` is an integer.

    ```python
    model = ngvi.SparseModel(ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X, y, inducing=256)
    result = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=2000, batch_size=1024)
    ```
    """

    prior: GPPrior
    likelihood: AbstractLikelihood
    data: Data
    inducing: Float[Array, "M d"] = learnable()
    family: str = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True)

    def __init__(
        self,
        prior: GPPrior,
        likelihood: AbstractLikelihood,
        X,
        y,
        *,
        inducing,
        family: str = "full",
        chunk_size: int = 4096,
        seed: int = 0,
    ):
        if not isinstance(prior, GPPrior):
            raise TypeError(f"`prior` must be a GPPrior, got {type(prior).__name__}.")
        if not isinstance(likelihood, AbstractLikelihood):
            raise TypeError(f"`likelihood` must be an AbstractLikelihood, got {type(likelihood)}.")
        check_latents(prior, likelihood)
        self.data = prepare_data(likelihood, X, y)
        self.inducing = jnp.asarray(_inducing_inputs(inducing, X, seed), self.data.X.dtype)
        if self.inducing.shape[1] != self.data.X.shape[1]:
            raise ValueError(
                f"The inducing inputs have {self.inducing.shape[1]} columns but `X` has "
                f"{self.data.X.shape[1]}."
            )
        if int(chunk_size) < 1:
            raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size}.")
        self.prior = prior
        self.likelihood = likelihood
        self.family = check_family(family)
        self.chunk_size = int(chunk_size)

    @property
    def num_inducing(self) -> int:
        return self.inducing.shape[0]

    def _factor(self) -> Float[Array, "M M"]:
        return self.prior.factor(self.inducing)

    def _view(self, factor, X):
        return self.prior.conditional_view(self.inducing, factor, X)

    def whitened_view(self, batch):
        return self.whitened_view_at((self.data if batch is None else batch).X)

    def whitened_view_at(self, X_new):
        return self._view(self._factor(), X_new)

    def latent_coordinates(self):
        return self.prior.latent_coordinates(self.inducing)

    def num_coordinates(self):
        return self.num_inducing

    def whitened_marginals(self, q, batch):
        return self.whitened_marginals_at(q, (self.data if batch is None else batch).X)

    def whitened_marginals_at(self, q, X_new):
        factor = self._factor()
        return chunked_rows(lambda X: q.project(self._view(factor, X)), X_new, self.chunk_size)

    def pullback(self, batch, statistics, diagonal):
        rows = self.data if batch is None else batch
        factor = self._factor()

        def one_chunk(chunk, weight):
            X, grad, hess = chunk
            view = self._view(factor, X)
            grads = view.from_points(grad * weight[:, None])
            hessians = view.from_points(hess * weight[:, None])
            return over_latents(lambda v, g, h: v.pullback(g, h, diagonal), view, grads, hessians)

        chunks = (rows.X, statistics.grad, statistics.hess)
        return chunked_sum(one_chunk, chunks, self.chunk_size)

    def diagnose(self, q) -> str:
        if bool(jnp.all(jnp.isfinite(self._factor()))):
            return ""
        return (
            "K(Z, Z) + jitter * I is not numerically positive definite: inducing inputs are "
            "(nearly) repeated or `jitter` is too small; increase the prior's jitter."
        )


def _inducing_inputs(inducing, X, seed: int) -> np.ndarray:
    if isinstance(inducing, (int, np.integer)) and not isinstance(inducing, bool):
        if inducing < 1:
            raise ValueError(f"`inducing` must be a positive number of points, got {inducing}.")
        return kmeans_inducing(as_inputs(X), int(inducing), seed)
    return as_inputs(inducing, "inducing")
