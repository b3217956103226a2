"""`GaussianProcessClassifier`: GP classification by natural-gradient VI."""

import equinox as eqx
import jax
import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import likelihoods as _likelihoods
from ..fitting.hyperpriors import SignalVariancePrior
from ..predict import warn_if_inaccurate
from ._base import BaseGP, padded_rows

_BINARY = {"probit": _likelihoods.Probit, "logit": _likelihoods.BernoulliLogit}
_MULTI_CLASS = {"softmax": _likelihoods.Softmax, "robustmax": _likelihoods.RobustMax}
# Above this many training points `num_inducing="auto"` switches a multi-class fit to the sparse
# model (see the class docstring for the measurements behind it).
_DENSE_LIMIT = 1000
_AUTO_INDUCING = 200


@eqx.filter_jit
def _class_probabilities(likelihood, mean, variance):
    """The class probabilities and how far each row's may be off."""
    probabilities = likelihood.class_probabilities(mean, variance)
    return probabilities, likelihood.predictive_error(mean, variance)


class GaussianProcessClassifier(ClassifierMixin, BaseGP):
    r"""GP classification by natural-gradient VI, binary or multi-class, with learned kernel
    hyperparameters.

    **Two classes.** One latent `f ~ GP(0, k)` with `k` a stationary kernel (`sigma^2 kappa(r)`,
    one lengthscale per feature when `ard=True`) and `p(y = 1 | f) = Phi(f)` (probit) or
    `sigmoid(f)` (logit). `predict_proba` integrates `f*` out: `Phi(m / sqrt(1 + v))` for
    probit, Gauss-Hermite quadrature for logit.

    **C > 2 classes.** One variational posterior over `C` latent GPs `f_1..f_C` (all with the
    same kernel), not `C` one-vs-rest fits: `p(y = c | f) = softmax(f)_c` (`multi_class=
    "softmax"`) or the robust max (`"robustmax"`, `1 - epsilon` if `c = argmax f`). The family
    is mean field across the latents, `q(f) = prod_c q(f_c)`; each natural-gradient step uses
    `E_q[log p]`, `E_q[g]` and the diagonal curvature `E_q[d^2 log p / d f_c^2]`, by Monte Carlo
    with common random numbers (softmax) or a 1-D quadrature (robust max). `predict_proba`
    returns `E_q[p(y* = c | f*)]`, an `(n, C)` array whose rows sum to 1; for softmax it averages
    `softmax(m + sqrt(v) eps)` over 512 antithetic pairs of draws `eps` shared by every row, so
    a row's probabilities do not depend on the other rows.

    Softmax is the default. Measured with `benchmarks/bench_multiclass.py` (one split, 100
    steps; `docs/results.md`), neither likelihood is always better calibrated: held-out NLPD
    0.049 (softmax) against 0.187 (robust max) on iris, 0.064 against 0.028 on wine. But the
    softmax fit is the robust one: its curvature `-pi_c (1 - pi_c)` is always negative, so
    natural steps of size 1 on the dense model's sites are safe, while the robust max's
    curvature can be positive and its fit needs the sparse model and a smaller step (on the
    three-blob problem of `docs/multiclass.md`, step 0.5 from the prior collapses to a poor
    fixed point). `multi_class="robustmax"` always runs on the sparse model with step 0.5
    (`"auto"`: `min(n, 200)` k-means inducing inputs; with `M >= n` or `None` they are the data,
    which is the full GP in whitened coordinates); its probabilities are capped at
    `1 - epsilon` whatever the margin.

    With `num_inducing="auto"` a softmax fit is dense (`ngvi.Model`, `C` Cholesky factors of
    `n x n` per step) up to 1,000 training points and sparse above (`ngvi.SparseModel`, 200
    k-means inducing inputs, learned with the kernel, full-batch steps). Measured on digits
    (1,257 training points, 10 classes, a shared 2-core CPU): three dense steps without
    hyperparameter learning took about 30 s, while the sparse fit ran 100 steps with learning
    in 160 s to a held-out accuracy of 0.98 and NLPD of 0.09. Binary fits stay dense with
    `"auto"`, as before; an integer `num_inducing` makes any fit sparse.

    **Arguments:**

    - `kernel`: `"se"` (= `"rbf"`), `"matern12"`, `"matern32"` or `"matern52"`.
    - `lengthscale`, `variance`: initial (or, with `learn_hyperparameters=False`, fixed) values.
    - `ard`: one lengthscale per feature (a scalar `lengthscale` is broadcast).
    - `likelihood`: the binary link, `"probit"` or `"logit"`.
    - `multi_class`: the likelihood for more than two classes, `"softmax"` or `"robustmax"`.
    - `num_inducing`: `"auto"` (above), `None` (always dense) or an integer `M` (sparse with
      `M` k-means inducing inputs whenever `M < n`).
    - `variance_prior`: the scale `s` of a log-normal prior on the signal variance, `log sigma^2
      ~ N(0, s^2)`, under which a binary fit learns its hyperparameters (MAP-II,
      `ngvi.SignalVariancePrior`); `None`, and any multi-class fit (not measured there yet):
      type-II maximum likelihood. Without it, `F` of an ARD classifier rewards ever larger
      `sigma^2` (certainty on the training labels): on sonar's folds it learned 220-2,200 and a
      held-out NLPD of 0.478; with `s = 1`, 28-31 and 0.378. The default 1 was chosen among
      {none, 2, 1} on the five data sets of `docs/results.md` (mean NLPD there: banana
      0.225/0.223/0.222, ionosphere 0.305/0.292/0.267, sonar 0.478/0.408/0.378, diabetes
      0.471/0.471/0.469, breast cancer 0.089/0.085/0.094).
    - `learn_hyperparameters`: learn the kernel's log-parameters: a binary dense fit maximises
      `F = max_q ELBO` (plus the log prior above) to convergence by variational EM with L-BFGS
      (`ngvi.fit_hyperparameters`); other fits take Adam steps on the ELBO.
    - `num_steps`: the EM fit's L-BFGS iterations, or the other fits' steps (each: one
      natural-gradient step, one Adam step).
    - `lr`: Adam's learning rate for the hyperparameters (fits that use Adam).
    - `standardize`: rescale each feature to zero mean, unit variance (on the training data).
    - `jitter`: diagonal added to the training kernel matrix.
    - `random_state`: seeds the PRNG key handed to `ngvi.fit` and the k-means inducing inputs.

    Labels may be of any type; `classes_` holds them sorted, columns of `predict_proba` follow
    that order, and with two classes `classes_[1]` is the positive class.

    ```python
    clf = GaussianProcessClassifier().fit(X, labels)  # e.g. labels in {"setosa", ...}
    clf.classes_, clf.predict_proba(X_test).sum(axis=1)  # rows sum to 1
    ```
    """

    def __init__(
        self,
        kernel="se",
        lengthscale=1.0,
        variance=1.0,
        ard=True,
        likelihood="probit",
        multi_class="softmax",
        num_inducing="auto",
        variance_prior=1.0,
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
        self.multi_class = multi_class
        self.num_inducing = num_inducing
        self.variance_prior = variance_prior

    def _check_parameters(self) -> None:
        super()._check_parameters()
        if self.likelihood not in _BINARY:
            raise ValueError(f"`likelihood` must be 'probit' or 'logit', got {self.likelihood!r}.")
        if self.multi_class not in _MULTI_CLASS:
            raise ValueError(
                f"`multi_class` must be 'softmax' or 'robustmax', got {self.multi_class!r}."
            )
        inducing = self.num_inducing
        valid = inducing is None or inducing == "auto"
        if not valid and not isinstance(inducing, str | bool | float):
            valid = int(inducing) == inducing and int(inducing) >= 1
        if not valid:
            raise ValueError(
                f"`num_inducing` must be 'auto', None or a positive integer, got {inducing!r}."
            )
        if self.variance_prior is not None and not float(self.variance_prior) > 0:
            raise ValueError(
                f"`variance_prior` must be positive or None, got {self.variance_prior!r}."
            )

    @property
    def _multi(self) -> bool:
        return len(self.classes_) > 2

    def _make_likelihood(self):
        if self._multi:
            return _MULTI_CLASS[self.multi_class](num_classes=len(self.classes_))
        return _BINARY[self.likelihood]()

    def _num_inducing(self, num_points: int) -> int | None:
        robust = self._multi and self.multi_class == "robustmax"
        if self.num_inducing == "auto":
            if robust:
                return min(num_points, _AUTO_INDUCING)
            return _AUTO_INDUCING if self._multi and num_points > _DENSE_LIMIT else None
        if self.num_inducing is None or int(self.num_inducing) >= num_points:
            # the robust max stalls on the dense sites: the full GP as M = n inducing inputs
            return num_points if robust else None
        return int(self.num_inducing)

    def _hyperprior(self):
        if self.variance_prior is None or self._multi:  # measured on binary data sets only
            return None
        return SignalVariancePrior(scale=float(self.variance_prior))

    def _natural_step(self) -> float:
        return 0.5 if self._multi and self.multi_class == "robustmax" else 1.0

    def fit(self, X, y, **fit_params):
        """Fit to inputs `X` `(n, d)` and class labels `y` `(n,)` of any type."""
        self._refuse_fit_params(fit_params)
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        y_type = type_of_target(y, input_name="y", raise_unknown=True)
        if y_type not in ("binary", "multiclass"):
            raise ValueError(f"Only binary or multiclass targets are supported, got {y_type}.")
        self.classes_, labels = np.unique(y, return_inverse=True)
        if self.classes_.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes; the data contain "
                f"{self.classes_.shape[0]} class."
            )
        return self._fit_latent(X, labels.astype(np.float64))

    def predict_proba(self, X) -> np.ndarray:
        """`(n, C)` class probabilities, columns ordered as `classes_`; rows sum to 1."""
        check_is_fitted(self, "posterior_")
        if not self._multi:
            p1 = np.clip(self._predict_moments(X)[2], 0.0, 1.0)
            return np.stack([1.0 - p1, p1], axis=1)
        mean, variance = self._predict_latent(X)
        likelihood, rows = self.model_.likelihood, len(mean)
        with jax.enable_x64(True):
            probabilities, errors = _class_probabilities(
                likelihood,
                padded_rows(mean),
                padded_rows(variance),  # zero variance: valid
            )
        error = float(np.max(np.asarray(errors)[:rows], initial=0.0))
        warn_if_inaccurate(likelihood, error, f"{type(self).__name__}.predict_proba")
        probabilities = np.asarray(probabilities)[:rows]
        probabilities = np.clip(probabilities, 0.0, 1.0)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The most probable class label for each row of `X`."""
        proba = self.predict_proba(X)
        if not self._multi:
            return self.classes_[(proba[:, 1] > 0.5).astype(int)]
        return self.classes_[np.argmax(proba, axis=1)]
