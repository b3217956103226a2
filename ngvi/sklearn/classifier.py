"""`GaussianProcessClassifier`: GP classification by natural-gradient VI."""

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import validate_data

from .. import likelihoods as _likelihoods
from ._base import BaseGP


class GaussianProcessClassifier(ClassifierMixin, BaseGP):
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
