"""The engine the estimators share: parameters, input scaling, fitting and predicting."""

import functools
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from .. import kernels as _kernels
from ..fitting import fit as _ngvi_fit
from ..fitting.em import fit_hyperparameters as _fit_hyperparameters
from ..hyperparameters import LearnHyperparameters
from ..models import Model, SparseModel
from ..optimizers import NaturalGradient
from ..predict import predict as _ngvi_predict
from ..priors import GPPrior

_KERNELS = {
    "se": _kernels.SquaredExponential,
    "rbf": _kernels.SquaredExponential,
    "matern12": _kernels.Matern12,
    "matern32": _kernels.Matern32,
    "matern52": _kernels.Matern52,
}


@functools.lru_cache(maxsize=16)
def _adam(lr: float) -> optax.GradientTransformation:
    # One object per learning rate: the compiled fit loop is keyed on it, so refits reuse it.
    return optax.adam(lr)


def _fit_posterior(
    model, *, learn: bool, num_steps: int, lr: float, step: float, key, hyperprior=None
):
    """Run `ngvi.fit`, learning the hyperparameters when asked; return `(model, q, result)`."""
    optimizer = NaturalGradient(lr=step)
    options = dict(num_steps=num_steps, key=key, progress=False)
    if not learn:
        result = _ngvi_fit(model, optimizer, **options)
        _warn_unless_converged(result, "posterior")
        return model, result.q, result
    if isinstance(model, Model) and model.num_latent == 1 and step == 1.0:
        # One latent, dense: variational EM with L-BFGS to a converged gradient
        # (`ngvi.fit_hyperparameters`); `num_steps` bounds the L-BFGS iterations.
        result = _fit_hyperparameters(model, hyperprior=hyperprior, max_steps=num_steps, throw=True)
        _warn_unless_converged(result, "hyperparameters")
        return result.model, result.q, result
    learner = LearnHyperparameters(optimizer=_adam(lr), hyperprior=hyperprior)
    result = _ngvi_fit(model, optimizer, learn=learner, **options)
    _warn_unless_converged(result, "posterior and hyperparameters")
    return result.model, result.q, result


def _warn_unless_converged(result, what: str) -> None:
    """scikit-learn's `ConvergenceWarning` for every fit that stopped short of convergence
    (the step budget, a stall, a schedule's end), whichever path fitted it."""
    if not result.converged:
        warnings.warn(f"ngvi: {what}: {result.message}.", ConvergenceWarning, 4)


def bucket_size(num_rows: int) -> int:
    """`num_rows` rounded up to a multiple of `2^max(3, floor(log2 n) - 4)` (at most ~6% more
    rows): cross-validation folds, whose sizes differ by a row or two, then share one shape,
    so the compiled fit and prediction are reused instead of compiled for every fold."""
    step = 2 ** max(3, num_rows.bit_length() - 5)
    return -(-num_rows // step) * step


def _padded_training_set(X: np.ndarray, targets: np.ndarray):
    """`(X, targets, weights)` padded to `bucket_size` rows with points of weight 0.

    A point of weight 0 adds nothing to the ELBO and gets no site, so the posterior at the
    real points, the ELBO and its gradients are those of the unpadded fit. The padding inputs
    sit far from the (standardised) data and from each other, where a stationary kernel makes
    them independent of everything, so `K` stays as well conditioned as the data's own."""
    num_rows, num_features = X.shape
    extra = bucket_size(num_rows) - num_rows
    reach = float(np.max(np.abs(X), initial=1.0))
    offsets = (np.arange(1, extra + 1) * 1e3 + 10.0) * reach
    pads = np.broadcast_to(offsets[:, None], (extra, num_features))
    weights = np.concatenate([np.ones(num_rows), np.zeros(extra)])
    filler = np.full(extra, targets[0], dtype=targets.dtype)
    return np.concatenate([X, pads]), np.concatenate([targets, filler]), weights


def padded_rows(values: np.ndarray) -> np.ndarray:
    """`values` (any rank) with rows of zeros appended up to `bucket_size` (predictions are
    per row, so the caller keeps the first rows): a prediction compiles once per bucket, not
    per size."""
    extra = bucket_size(values.shape[0]) - values.shape[0]
    return np.concatenate([values, np.zeros((extra, *values.shape[1:]), values.dtype)])


def _padded_inputs(X: np.ndarray) -> jax.Array:
    return jnp.asarray(padded_rows(X))


@eqx.filter_jit
def _latent_marginals(model, q, X):
    marginals = model.predict_latent(q, X)
    return marginals.mean, marginals.variance


class BaseGP(BaseEstimator):
    """Shared parameters, input handling and the fit/predict engine (not public)."""

    def __init__(
        self,
        kernel="se",
        lengthscale=1.0,
        variance=1.0,
        ard=True,
        learn_hyperparameters=True,
        num_steps=200,
        lr=0.05,
        standardize=True,
        jitter=1e-6,
        random_state=None,
    ):
        self.kernel = kernel
        self.lengthscale = lengthscale
        self.variance = variance
        self.ard = ard
        self.learn_hyperparameters = learn_hyperparameters
        self.num_steps = num_steps
        self.lr = lr
        self.standardize = standardize
        self.jitter = jitter
        self.random_state = random_state

    # -- hooks for the concrete estimators ------------------------------------------------
    def _make_likelihood(self):
        raise NotImplementedError

    def _prior_mean(self, y: np.ndarray) -> float:
        return 0.0

    def _num_inducing(self, num_points: int) -> int | None:
        """Inducing points for a `SparseModel`, or `None` for the dense `Model`."""
        return None

    def _natural_step(self) -> float:
        """The natural-gradient step size (1 is exact for a Gaussian likelihood)."""
        return 1.0

    def _hyperprior(self):
        """The prior on the learned hyperparameters (`None`: type-II maximum likelihood)."""
        return None

    # -- pickling ---------------------------------------------------------------------------
    def __getstate__(self):
        """The fitted model and posterior with NumPy leaves: a JAX array would be unpickled in
        the process's default precision (float32 without `jax_enable_x64`), and the restored
        estimator would predict differently (or NaN). Predictions convert them back to
        float64 under `jax.enable_x64(True)`."""
        state = dict(super().__getstate__())
        for name in ("model_", "posterior_"):
            if name in state:
                state[name] = jax.tree.map(
                    lambda leaf: np.asarray(leaf) if isinstance(leaf, jax.Array) else leaf,
                    state[name],
                )
        return state

    # -- shared machinery -----------------------------------------------------------------
    def _refuse_fit_params(self, fit_params: dict) -> None:
        """`sample_weight` is refused with the reason (a weighted likelihood is not built
        in); any other keyword is an error, as for a plain `fit(X, y)`."""
        weights = fit_params.pop("sample_weight", None)
        if weights is not None:
            raise ValueError(
                f"{type(self).__name__} does not support `sample_weight`: its likelihood "
                "weighs every point equally. Repeat rows to weight them, or fit without it."
            )
        if fit_params:
            raise TypeError(f"fit() got unexpected keyword arguments {sorted(fit_params)}.")

    def _check_parameters(self) -> None:
        if self.kernel not in _KERNELS:
            raise ValueError(f"`kernel` must be one of {sorted(_KERNELS)}, got {self.kernel!r}.")
        steps = self.num_steps
        if isinstance(steps, bool) or not float(steps).is_integer() or steps < 1:
            raise ValueError(f"`num_steps` must be a positive integer, got {self.num_steps!r}.")
        if not float(self.lr) > 0:
            raise ValueError(f"`lr` must be positive, got {self.lr!r}.")

    def _make_kernel(self, num_features: int):
        lengthscale = np.asarray(self.lengthscale, dtype=float)
        if self.ard and lengthscale.ndim == 0:
            lengthscale = np.full(num_features, float(lengthscale))
        if lengthscale.ndim == 1 and lengthscale.shape[0] != num_features:
            raise ValueError(
                f"`lengthscale` has {lengthscale.shape[0]} entries but X has {num_features} "
                "features."
            )
        return _KERNELS[self.kernel](variance=float(self.variance), lengthscale=lengthscale)

    def _scale_inputs(self, X: np.ndarray, reset: bool) -> np.ndarray:
        if reset:
            if self.standardize:
                scale = X.std(axis=0)
                self.x_mean_ = X.mean(axis=0)
                self.x_scale_ = np.where(scale > 0, scale, 1.0)
            else:
                self.x_mean_ = np.zeros(X.shape[1])
                self.x_scale_ = np.ones(X.shape[1])
        return (X - self.x_mean_) / self.x_scale_

    def _fit_latent(self, X: np.ndarray, targets: np.ndarray):
        """Fit the GP to `targets` (already in the likelihood's encoding)."""
        self._check_parameters()
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        X = self._scale_inputs(np.asarray(X, dtype=np.float64), reset=True)
        with jax.enable_x64(True):
            prior = GPPrior(
                self._make_kernel(X.shape[1]), mean=self._prior_mean(targets), jitter=self.jitter
            )
            likelihood, num_inducing = self._make_likelihood(), self._num_inducing(X.shape[0])
            if num_inducing is None:
                inputs, padded_targets, weights = _padded_training_set(X, targets)
                model = Model(prior, likelihood, inputs, padded_targets, weights=weights)
            else:
                model = SparseModel(prior, likelihood, X, targets, inducing=num_inducing, seed=seed)
            model, q, result = _fit_posterior(
                model,
                learn=bool(self.learn_hyperparameters),
                num_steps=int(self.num_steps),
                lr=float(self.lr),
                step=self._natural_step(),
                key=jax.random.PRNGKey(seed),
                hyperprior=self._hyperprior(),
            )
        self.model_, self.posterior_ = model, q
        self.kernel_ = model.prior.kernel
        self.elbo_ = float(result.elbo)
        self.n_iter_ = int(result.num_steps)
        return self

    def _predict_moments(self, X) -> tuple[np.ndarray, ...]:
        """`(latent mean, latent variance, predictive mean, predictive variance)` at `X`."""
        check_is_fitted(self, "posterior_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        X = self._scale_inputs(X, reset=False)
        with jax.enable_x64(True):
            prediction = _ngvi_predict(self.model_, self.posterior_, _padded_inputs(X))
            return tuple(
                np.asarray(a, dtype=np.float64)[: X.shape[0]]
                for a in (
                    prediction.latent_mean,
                    prediction.latent_variance,
                    prediction.mean,
                    prediction.variance,
                )
            )

    def _predict_latent(self, X) -> tuple[np.ndarray, np.ndarray]:
        """The latent marginals `(mean, variance)` at `X`, each `(n, num_latent)`."""
        check_is_fitted(self, "posterior_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        X = self._scale_inputs(X, reset=False)
        with jax.enable_x64(True):
            mean, variance = _latent_marginals(self.model_, self.posterior_, _padded_inputs(X))
            count = X.shape[0]
            return np.asarray(mean, np.float64)[:count], np.asarray(variance, np.float64)[:count]

    @property
    def lengthscale_(self) -> np.ndarray:
        """The fitted lengthscale(s), in standardised input units when `standardize=True`."""
        check_is_fitted(self, "posterior_")
        return np.asarray(self.kernel_.lengthscale)

    @property
    def variance_(self) -> float:
        """The fitted signal variance."""
        check_is_fitted(self, "posterior_")
        return float(self.kernel_.variance)
