"""`SparseModel`: a GP through `M` inducing values, fitted by full-batch or minibatch steps."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._data import Data, as_inputs, prepare_data, prepare_sharded_data, weighted
from .._sharding import RowSharding
from .._validation import is_whole_number
from ..families import SiteStatistics
from ..families.views import over_latents
from ..likelihoods import AbstractLikelihood
from ..parameters import learnable
from ..priors import GPPrior
from .base import (
    AbstractModel,
    check_family,
    check_latents,
    check_no_per_point_parameters,
    prior_factor_is_finite,
)
from .chunks import chunked_rows, chunked_sum, mapped_rows
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
    - `seed`: for choosing `Z` when `inducing` is an integer (k-means over the points of
      positive weight when `weights` are given).
    - `num_data`: for a model without data (`X = y = None`) that `fit(..., data=stream)`
      feeds from a `ngvi.Stream`: the number of rows the stream holds.
    - `weights`: optional non-negative weights `(n,)` of the points' expected
      log-likelihoods, as for `ngvi.Model` (in-memory data on one device only). A minibatch
      carries its rows' weights, so the `N / B`-scaled estimate stays unbiased.

    `X` and `y` may be split by rows over devices (`jax.device_put(X, NamedSharding(mesh,
    P("data")))`, or a global array over several processes): every pass over the rows then
    runs on each device's own rows and one all-reduce combines them (see the "Scaling out"
    docs page). `q`, `Z` and the hyperparameters are replicated.

    ```python
    model = ngvi.SparseModel(ngvi.GPPrior(kernel), ngvi.likelihoods.Probit(), X, y, inducing=256)
    result = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=2000, batch_size=1024)
    ```
    """

    prior: GPPrior
    likelihood: AbstractLikelihood
    data: Data | None
    inducing: Float[Array, "M d"] = learnable()
    family: str = eqx.field(static=True)
    chunk_size: int = eqx.field(static=True)
    sharding: RowSharding | None = eqx.field(static=True)
    streamed_rows: int | None = eqx.field(static=True)

    def __init__(
        self,
        prior: GPPrior,
        likelihood: AbstractLikelihood,
        X=None,
        y=None,
        *,
        inducing,
        family: str = "full",
        chunk_size: int = 4096,
        seed: int = 0,
        num_data: int | None = None,
        weights=None,
    ):
        if not isinstance(prior, GPPrior):
            raise TypeError(f"`prior` must be a GPPrior, got {type(prior).__name__}.")
        if not isinstance(likelihood, AbstractLikelihood):
            raise TypeError(f"`likelihood` must be an AbstractLikelihood, got {type(likelihood)}.")
        check_latents(prior, likelihood)
        check_no_per_point_parameters(likelihood, "a SparseModel")
        self.sharding = RowSharding.of(X)
        self.streamed_rows = _streamed_rows(X, y, num_data)
        if weights is not None and (self.streamed_rows is not None or self.sharding is not None):
            raise ValueError(
                "`weights` are supported for in-memory data on one device; a streamed or "
                "sharded SparseModel weighs every point equally."
            )
        if self.streamed_rows is not None:
            self.data = None
        elif self.sharding is None:
            self.data = prepare_data(likelihood, X, y, weights)
        else:
            self.data = prepare_sharded_data(likelihood, X, y, self.sharding)
        dtype = jnp.zeros(()).dtype
        self.inducing = jnp.asarray(
            _inducing_inputs(inducing, _weighed_rows(X, weights), seed), dtype
        )
        if self.data is not None and self.inducing.shape[1] != self.data.X.shape[1]:
            raise ValueError(
                f"The inducing inputs have {self.inducing.shape[1]} columns but `X` has "
                f"{self.data.X.shape[1]}."
            )
        if not is_whole_number(chunk_size) or chunk_size < 1:  # 2.5 was taken as 2
            raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size!r}.")
        self.prior = prior
        self.likelihood = likelihood
        self.family = check_family(family)
        self.chunk_size = int(chunk_size)

    @property
    def num_data(self) -> int:
        return self.data.num_points if self.streamed_rows is None else self.streamed_rows

    @property
    def dtype(self):
        return self.inducing.dtype

    def _rows(self, batch: Data | None) -> Data:
        if batch is None and self.data is None:
            raise ValueError(
                "This SparseModel holds no data (it was made for a streamed fit): pass a batch, "
                "or use `ngvi.fit(..., data=stream)` and `ngvi.Stream.elbo`."
            )
        return self.data if batch is None else batch

    @property
    def num_inputs(self) -> int:
        return self.inducing.shape[1]  # also for a model without data (a streamed fit)

    @property
    def num_inducing(self) -> int:
        return self.inducing.shape[0]

    def _factor(self) -> Float[Array, "M M"]:
        return self.prior.factor(self.inducing)

    def _factors(self) -> tuple[Float[Array, "M M"], Float[Array, "M M"]]:
        return self.prior.factor_and_inverse(self.inducing)

    def _view(self, factors, X):
        return self.prior.conditional_view(self.inducing, factors, X)

    def whitened_view(self, batch):
        return self.whitened_view_at(self._rows(batch).X)

    def whitened_view_at(self, X_new):
        return self._view(self._factors(), X_new)

    def latent_coordinates(self):
        return self.prior.latent_coordinates(self.inducing)

    def num_coordinates(self):
        return self.num_inducing

    def whitened_marginals(self, q, batch):
        rows = self._rows(batch).X
        if self.sharding is None:
            return self.whitened_marginals_at(q, rows)
        replicated = (q, self.prior, self.inducing, self._factors())

        def local(X, replicated):
            # The replicated values enter `shard_map` as arguments, not by closure: Adam's
            # gradient through the chunks' `lax.map` failed with a mesh mismatch on closed-over
            # values.
            q, prior, inducing, factor = replicated

            def one(Xc):
                return q.project(prior.conditional_view(inducing, factor, Xc))

            return mapped_rows(one, X, self.chunk_size)

        return self.sharding.map_rows(local, rows, replicated)

    def whitened_marginals_at(self, q, X_new):
        factor = self._factors()
        return chunked_rows(lambda X: q.project(self._view(factor, X)), X_new, self.chunk_size)

    def pullback(self, batch, statistics, diagonal):
        rows = self._rows(batch)
        factor = self._factors()

        def one_chunk(chunk, weight):
            X, grad, hess = chunk
            view = self._view(factor, X)
            grads = view.from_points(grad * weight[:, None])
            hessians = view.from_points(hess * weight[:, None])
            return over_latents(lambda v, g, h: v.pullback(g, h, diagonal), view, grads, hessians)

        chunks = (rows.X, statistics.grad, statistics.hess)
        if self.sharding is None:
            return chunked_sum(one_chunk, chunks, self.chunk_size)
        return self.sharding.sum_rows(lambda c: chunked_sum(one_chunk, c, self.chunk_size), chunks)

    def pulled_back_statistics(self, q, batch, statistics_fn, diagonal):
        """One pass over the rows in chunks: per chunk the kernel block and its view are built
        once, and give the marginals, the statistics and their pullback (the unfused sequence
        builds them twice, for the marginals and for the pullback)."""
        rows = self._rows(batch)
        factor = self._factors()

        def one_chunk(chunk, overlap):
            X, y, weight = chunk
            view = self._view(factor, X)
            statistics = statistics_fn(y, q.project(view))
            keep = overlap if weight is None else overlap * weight
            statistics = SiteStatistics(*(weighted(keep, part) for part in statistics))
            grads, hessians = view.from_points(statistics.grad), view.from_points(statistics.hess)
            pulled = over_latents(lambda v, g, h: v.pullback(g, h, diagonal), view, grads, hessians)
            return jnp.sum(statistics.log_prob), *pulled

        chunks = (rows.X, rows.y, rows.weight)
        if self.sharding is None:
            return chunked_sum(one_chunk, chunks, self.chunk_size)
        return self.sharding.sum_rows(lambda c: chunked_sum(one_chunk, c, self.chunk_size), chunks)

    @property
    def row_shards(self) -> int:
        return 1 if self.sharding is None else self.sharding.num_shards

    def batch(self, indices):
        if self.sharding is None:
            return self.data[indices]
        return self.sharding.take(self.data, indices)

    def diagnose(self, q) -> str:
        if bool(prior_factor_is_finite(self)):
            return ""
        return (
            "K(Z, Z) + jitter * I is not numerically positive definite: inducing inputs are "
            "(nearly) repeated or `jitter` is too small; increase the prior's jitter."
        )


def _streamed_rows(X, y, num_data) -> int | None:
    """`num_data` for a model without data (checked), `None` for a model with data."""
    if X is None and y is None:
        if num_data is None or not is_whole_number(num_data):
            raise ValueError(
                "A SparseModel without data (for `fit(..., data=stream)`) needs "
                "`num_data=`, the number of rows the stream holds."
            )
        if num_data < 1:
            raise ValueError(f"`num_data` must be a positive integer, got {num_data}.")
        return int(num_data)
    if X is None or y is None:
        raise ValueError("Give both `X` and `y`, or neither (for a streamed fit).")
    if num_data is not None:
        raise ValueError("`num_data` is only for a model without data; it is len(y) here.")
    return None


def _weighed_rows(X, weights):
    """The rows of `X` that take part in the fit (positive weight), where k-means looks for
    inducing inputs (reproducer: with 300 far-away rows of weight 0, 8 of 10 centres sat
    among them)."""
    if weights is None or X is None:
        return X
    return as_inputs(X)[np.asarray(weights, dtype=float).reshape(-1) > 0]


def _inducing_inputs(inducing, X, seed: int) -> np.ndarray:
    if isinstance(inducing, (bool, np.bool_)):
        raise ValueError(
            f"`inducing` must be a whole number of points or the inputs `(M, d)`; got {inducing!r}."
        )
    if isinstance(inducing, (int, np.integer)):
        if inducing < 1:
            raise ValueError(f"`inducing` must be a positive number of points, got {inducing}.")
        if X is None:
            raise ValueError("A model without data needs the inducing inputs `(M, d)` themselves.")
        if not getattr(X, "is_fully_addressable", True):
            raise ValueError(
                "`X` is spread over several processes, so k-means cannot see all of it: pass "
                "the inducing inputs `(M, d)` themselves (the same on every process)."
            )
        return kmeans_inducing(as_inputs(X), int(inducing), seed)
    if isinstance(inducing, (float, np.floating)):
        raise ValueError(
            f"`inducing` must be a whole number of points or the inputs `(M, d)`; got {inducing!r}."
        )
    return as_inputs(inducing, "inducing")
