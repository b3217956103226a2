"""scikit-learn estimators backed by ngvi's natural-gradient GP inference.

Requires the optional extra: `pip install ngvi[sklearn]`. Three estimators share one engine:

| estimator | likelihood | `predict` returns |
|---|---|---|
| `GaussianProcessClassifier` | probit or logit, binary labels | the more probable class |
| `GaussianProcessRegressor` | Gaussian, learned noise | the predictive mean (and sd) of `y*` |
| `PoissonProcessRegressor` | Poisson, log link | the predictive mean rate `exp(m + v / 2)` |

Each `fit` builds `ngvi.Model(GPPrior(kernel), likelihood, X, y)` and runs
`ngvi.fit(model, NaturalGradient(lr=1.0), num_steps, learn=LearnHyperparameters(adam(lr)))`:
natural-gradient steps on the posterior interleaved with Adam steps on the kernel's log-parameters
(and the Gaussian noise) that climb the ELBO. With `learn_hyperparameters=False` the kernel is
held at its initial values and `fit` is plain natural-gradient VI.

All computation runs in float64 inside `jax.enable_x64(True)` (a context manager: importing or
using this module does not switch JAX's global default to 64 bits). Results are NumPy arrays.

```python
from ngvi.sklearn import GaussianProcessClassifier

clf = GaussianProcessClassifier(kernel="se", ard=True).fit(X, y)
clf.predict_proba(X_test)[:, 1], clf.score(X_test, y_test)
```
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, check_random_state, validate_data

from . import kernels as _kernels, likelihoods as _likelihoods
from .fit import fit as _ngvi_fit
from .hyperparameters import LearnHyperparameters
from .models import Model
from .optimizers import NaturalGradient
from .predict import predict as _ngvi_predict
from .priors import GPPrior

__all__ = ["GaussianProcessClassifier", "GaussianProcessRegressor", "PoissonProcessRegressor"]

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


def _fit_posterior(model, *, learn: bool, num_steps: int, lr: float, key):
    """Run `ngvi.fit`, learning the hyperparameters when asked; return `(model, q, result)`."""
    optimizer = NaturalGradient(lr=1.0)
    options = dict(num_steps=num_steps, key=key, progress=False)
    if not learn:
        result = _ngvi_fit(model, optimizer, **options)
        return model, result.q, result
    learner = LearnHyperparameters(optimizer=_adam(lr))
    result = _ngvi_fit(model, optimizer, learn=learner, **options)
    return result.model, result.q, result


class _BaseGP(BaseEstimator):
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

    # -- shared machinery -----------------------------------------------------------------
    def _check_parameters(self) -> None:
        if self.kernel not in _KERNELS:
            raise ValueError(f"`kernel` must be one of {sorted(_KERNELS)}, got {self.kernel!r}.")
        if int(self.num_steps) < 1:
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
            model = Model(prior, self._make_likelihood(), X, targets)
            model, q, result = _fit_posterior(
                model,
                learn=bool(self.learn_hyperparameters),
                num_steps=int(self.num_steps),
                lr=float(self.lr),
                key=jax.random.PRNGKey(seed),
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
            prediction = _ngvi_predict(self.model_, self.posterior_, jnp.asarray(X))
            return tuple(
                np.asarray(a, dtype=np.float64)
                for a in (
                    prediction.latent_mean,
                    prediction.latent_variance,
                    prediction.mean,
                    prediction.variance,
                )
            )

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


class GaussianProcessClassifier(ClassifierMixin, _BaseGP):
    """Binary GP classification by natural-gradient VI, with learned kernel hyperparameters.

    The latent `f ~ GP(0, k)` with `k` a stationary kernel (`sigma^2 kappa(r)`, one lengthscale
    per feature when `ard=True`) and `p(y = 1 | f) = Phi(f)` (probit) or `sigmoid(f)` (logit).
    `predict_proba` integrates `f*` out: `Phi(m / sqrt(1 + v))` for probit, Gauss-Hermite
    quadrature for logit.

    **Arguments:**

    - `kernel`: `"se"` (= `"rbf"`), `"matern12"`, `"matern32"` or `"matern52"`.
    - `lengthscale`, `variance`: initial (or, with `learn_hyperparameters=False`, fixed) values.
    - `ard`: one lengthscale per feature (a scalar `lengthscale` is broadcast).
    - `likelihood`: `"probit"` or `"logit"`.
    - `learn_hyperparameters`: maximise the ELBO over the kernel's log-parameters with Adam.
    - `num_steps`: fit steps (each: one natural-gradient step, one Adam step).
    - `lr`: Adam's learning rate for the hyperparameters (the natural-gradient step is 1).
    - `standardize`: rescale each feature to zero mean, unit variance (on the training data).
    - `jitter`: diagonal added to the training kernel matrix.
    - `random_state`: seeds the PRNG key handed to `ngvi.fit`.

    Labels may be any two values; `classes_` holds them sorted and `classes_[1]` is the positive
    class. Only binary problems are supported.
    """

    def __init__(
        self,
        kernel="se",
        lengthscale=1.0,
        variance=1.0,
        ard=True,
        likelihood="probit",
        learn_hyperparameters=True,
        num_steps=200,
        lr=0.05,
        standardize=True,
        jitter=1e-6,
        random_state=None,
    ):
        super().__init__(
            kernel=kernel,
            lengthscale=lengthscale,
            variance=variance,
            ard=ard,
            learn_hyperparameters=learn_hyperparameters,
            num_steps=num_steps,
            lr=lr,
            standardize=standardize,
            jitter=jitter,
            random_state=random_state,
        )
        self.likelihood = likelihood

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _make_likelihood(self):
        if self.likelihood == "probit":
            return _likelihoods.Probit()
        if self.likelihood == "logit":
            return _likelihoods.BernoulliLogit()
        raise ValueError(f"`likelihood` must be 'probit' or 'logit', got {self.likelihood!r}.")

    def fit(self, X, y):
        """Fit to inputs `X` `(n, d)` and binary labels `y` `(n,)`."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y", raise_unknown=True)
        if y_type != "binary":
            raise ValueError(
                f"Only binary classification is supported. The type of the target is {y_type}."
            )
        self.classes_ = np.unique(y)
        if self.classes_.shape[0] != 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of 2 classes; the data contain "
                f"{self.classes_.shape[0]} class."
            )
        return self._fit_latent(X, (y == self.classes_[1]).astype(np.float64))

    def predict_proba(self, X) -> np.ndarray:
        """`(n, 2)` class probabilities, columns ordered as `classes_`."""
        p1 = np.clip(self._predict_moments(X)[2], 0.0, 1.0)
        return np.stack([1.0 - p1, p1], axis=1)

    def predict(self, X) -> np.ndarray:
        """The more probable class label for each row of `X`."""
        positive = self.predict_proba(X)[:, 1] > 0.5
        return self.classes_[positive.astype(int)]


class GaussianProcessRegressor(RegressorMixin, _BaseGP):
    """GP regression with a Gaussian likelihood of learned noise variance.

    With a Gaussian likelihood one natural-gradient step of size 1 gives the exact posterior, so
    with `learn_hyperparameters=False` this matches `sklearn.gaussian_process.
    GaussianProcessRegressor(kernel=C * RBF + WhiteKernel(noise_variance), optimizer=None,
    alpha=jitter)`.

    Arguments as for `GaussianProcessClassifier` (without `likelihood`), plus
    `noise_variance` (initial / fixed observation noise, in normalised units when
    `normalize_y=True`) and `normalize_y` (fit to `(y - mean) / std`, as scikit-learn does).
    """

    def __init__(
        self,
        kernel="se",
        lengthscale=1.0,
        variance=1.0,
        ard=True,
        noise_variance=1.0,
        normalize_y=True,
        learn_hyperparameters=True,
        num_steps=200,
        lr=0.05,
        standardize=True,
        jitter=1e-6,
        random_state=None,
    ):
        super().__init__(
            kernel=kernel,
            lengthscale=lengthscale,
            variance=variance,
            ard=ard,
            learn_hyperparameters=learn_hyperparameters,
            num_steps=num_steps,
            lr=lr,
            standardize=standardize,
            jitter=jitter,
            random_state=random_state,
        )
        self.noise_variance = noise_variance
        self.normalize_y = normalize_y

    def _make_likelihood(self):
        return _likelihoods.Gaussian(variance=float(self.noise_variance))

    def fit(self, X, y):
        """Fit to inputs `X` `(n, d)` and real targets `y` `(n,)`."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        if self.normalize_y:
            scale = y.std()
            self.y_mean_, self.y_scale_ = y.mean(), (scale if scale > 0 else 1.0)
        else:
            self.y_mean_, self.y_scale_ = 0.0, 1.0
        return self._fit_latent(X, (y - self.y_mean_) / self.y_scale_)

    @property
    def noise_variance_(self) -> float:
        """The fitted noise variance, in the units of `y` (undoing `normalize_y`)."""
        check_is_fitted(self, "posterior_")
        return float(self.model_.likelihood.variance) * self.y_scale_**2

    def predict(self, X, return_std: bool = False):
        """Predictive mean of `y*`; with `return_std=True` also its standard deviation
        (latent variance plus noise, like scikit-learn with a `WhiteKernel`)."""
        mean, _, _, variance = self._predict_moments(X)
        mean = self.y_mean_ + self.y_scale_ * mean
        if return_std:
            return mean, self.y_scale_ * np.sqrt(variance)
        return mean


class PoissonProcessRegressor(RegressorMixin, _BaseGP):
    """GP regression of counts: `y ~ Poisson(exp f)`, `f ~ GP(m0, k)`.

    The constant prior mean `m0 = log(mean(y))` (floored at `log 1e-3`) is set from the data;
    the kernel is learned. `predict` returns the predictive mean rate `exp(m + v / 2)`.
    Targets must be non-negative integers. Arguments as for `GaussianProcessClassifier`
    (without `likelihood`).
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True
        return tags

    def _make_likelihood(self):
        return _likelihoods.Poisson()

    def _prior_mean(self, y: np.ndarray) -> float:
        return float(np.log(max(float(np.mean(y)), 1e-3)))

    def fit(self, X, y):
        """Fit to inputs `X` `(n, d)` and counts `y` `(n,)`."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        return self._fit_latent(X, y)

    def predict(self, X) -> np.ndarray:
        """The predictive mean count (rate) at each row of `X`."""
        return self._predict_moments(X)[2]
