"""`GaussianProcessRegressor` and `PoissonProcessRegressor`."""

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import likelihoods as _likelihoods
from ._base import BaseGP


def _real_targets(y):
    """`y` as float64 (numbers written as text are read), refusing values that are not
    numbers or not finite by name: a text target failed inside numpy's `std` with a dtype
    error, an object target with `None` as NaN in the scaled prior mean."""
    if y is None:
        return y  # scikit-learn's own check says that `y` is required
    try:
        values = np.asarray(y, dtype=np.float64)
    except (TypeError, ValueError):
        example = next(iter(np.ravel(np.asarray(y, dtype=object))), None)
        raise ValueError(f"`y` must hold real numbers; it holds e.g. {example!r}.") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(
            f"`y` has {bad.size} NaN/inf or missing value(s), first at index {bad[0]}."
        )
    return values


def _location_and_scale(y: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of `y` computed on `y / max|y|` (so targets near the
    largest float, 1e200 say, do not overflow to NaN predictions); scale 1 for constant `y`."""
    peak = float(np.max(np.abs(y)))
    if peak == 0.0:
        return 0.0, 1.0
    scaled = y / peak
    scale = peak * float(np.std(scaled))
    return peak * float(np.mean(scaled)), (scale if scale > 0 else 1.0)


class GaussianProcessRegressor(RegressorMixin, BaseGP):
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

    def fit(self, X, y, **fit_params):
        """Fit to inputs `X` `(n, d)` and real targets `y` `(n,)`."""
        self._refuse_fit_params(fit_params)
        X, y = validate_data(self, X, _real_targets(y), dtype=np.float64, y_numeric=True)
        if self.normalize_y:
            self.y_mean_, self.y_scale_ = _location_and_scale(y)
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


class PoissonProcessRegressor(RegressorMixin, BaseGP):
    """GP regression of counts: `y ~ Poisson(exp f)`, `f ~ GP(m0, k)`.

    The constant prior mean `m0 = log(mean(y))` (floored at `log 1e-3`) is set from the data;
    the kernel is learned. `predict` returns the predictive mean rate `exp(m + v / 2)`.
    Targets must be non-negative; like scikit-learn's `PoissonRegressor`, real values (rates,
    averaged counts) are accepted (`Poisson(integer_counts=False)`). Arguments as for
    `GaussianProcessClassifier` (without `likelihood`).
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.positive_only = True
        return tags

    def _make_likelihood(self):
        return _likelihoods.Poisson(integer_counts=False)

    def _prior_mean(self, y: np.ndarray) -> float:
        return float(np.log(max(float(np.mean(y)), 1e-3)))

    def fit(self, X, y, **fit_params):
        """Fit to inputs `X` `(n, d)` and counts `y` `(n,)`."""
        self._refuse_fit_params(fit_params)
        X, y = validate_data(self, X, _real_targets(y), dtype=np.float64, y_numeric=True)
        return self._fit_latent(X, y)

    def predict(self, X) -> np.ndarray:
        """The predictive mean count (rate) at each row of `X`."""
        return self._predict_moments(X)[2]
