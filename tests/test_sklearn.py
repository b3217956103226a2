"""The scikit-learn estimators: sklearn's own estimator checks, plus behaviour against
independent references (sklearn's exact GP regression, class frequencies, true Poisson rates,
held-out labels of generated classes, a quadrature of the softmax average)."""

import os
import subprocess
import sys
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.gaussian_process import GaussianProcessRegressor as SkGPR  # noqa: E402
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import ngvi  # noqa: E402
from ngvi.sklearn import (  # noqa: E402
    GaussianProcessClassifier,
    GaussianProcessRegressor,
    PoissonProcessRegressor,
)


# The checks run dozens of tiny fits, and every new data shape compiles the fit loop once, so
# compilation dominates. They run with fixed hyperparameters (plain natural-gradient VI); the
# learning path compiles a heavier loop and is checked by the tests below and, under sklearn's
# checks, by the slow test at the end.
def _checked(learn: bool):
    # Five steps keep the fixed-hyperparameter checks fast; learning gets the default budget,
    # since five L-BFGS iterations leave the Poisson kernel unlearned (R^2 0.06 on
    # `check_regressors_train`, which asks for 0.5; 0.79 with 20 iterations or more).
    options = dict(random_state=0, learn_hyperparameters=learn)
    if not learn:
        options["num_steps"] = 5
    return [
        GaussianProcessClassifier(**options),
        GaussianProcessRegressor(**options),
        PoissonProcessRegressor(**options),
    ]


# No expected failures: every check passes for all three estimators (issue 14).
@parametrize_with_checks(_checked(learn=False))
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


@pytest.mark.slow
@parametrize_with_checks(_checked(learn=True))
def test_sklearn_estimator_checks_learning(estimator, check):
    check(estimator)


def _nlpd(p1, y):
    return -np.mean(np.where(y == 1, np.log(p1), np.log1p(-p1)))


@pytest.fixture(scope="module")
def banana_split():
    X, y = ngvi.datasets.banana()
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:200], order[200:]
    return X[train], y[train], X[test], y[test]


def test_classifier_on_banana_learns_accurate_calibrated_probabilities(banana_split):
    X, y, X_test, y_test = banana_split
    clf = GaussianProcessClassifier(num_steps=60, lr=0.1, random_state=0).fit(X, y)
    assert clf.score(X_test, y_test) > 0.85
    proba = clf.predict_proba(X_test)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # A constant predictor at the training class frequency is the no-skill baseline.
    baseline = _nlpd(np.full(len(y_test), y.mean()), y_test)
    assert _nlpd(proba[:, 1], y_test) < 0.6 * baseline


def test_classifier_accepts_arbitrary_binary_labels(banana_split):
    X, y, X_test, _ = banana_split
    options = dict(learn_hyperparameters=False, num_steps=30)
    numeric = GaussianProcessClassifier(**options).fit(X[:60], y[:60])
    names = np.where(y[:60] == 1, "yes", "no")
    named = GaussianProcessClassifier(**options).fit(X[:60], names)
    np.testing.assert_array_equal(named.classes_, ["no", "yes"])
    np.testing.assert_allclose(named.predict_proba(X_test), numeric.predict_proba(X_test))
    np.testing.assert_array_equal(
        named.predict(X_test), np.where(numeric.predict(X_test) == 1, "yes", "no")
    )
    with pytest.raises(ValueError, match="at least 2 classes"):
        GaussianProcessClassifier(**options).fit(X[:9], np.zeros(9))
    with pytest.raises(ValueError, match="Unknown label type"):
        GaussianProcessClassifier(**options).fit(X[:9], np.linspace(0, 1, 9) + 0.05)


def test_logit_and_probit_both_fit(banana_split):
    X, y, X_test, y_test = banana_split
    for likelihood in ("probit", "logit"):
        clf = GaussianProcessClassifier(
            likelihood=likelihood, learn_hyperparameters=False, num_steps=30
        )
        assert clf.fit(X[:100], y[:100]).score(X_test, y_test) > 0.8


def _regression_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-3, 3, size=(n, 2))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1] + 3.0 + 0.1 * rng.normal(size=n)
    return X, y, rng.uniform(-3, 3, size=(15, 2))


@pytest.mark.parametrize("normalize_y", [False, True])
def test_regressor_with_fixed_hyperparameters_matches_sklearn(normalize_y):
    X, y, X_test = _regression_data()
    variance, lengthscale, noise, jitter = 1.3, np.array([0.9, 1.7]), 0.05, 1e-6
    ours = GaussianProcessRegressor(
        variance=variance,
        lengthscale=lengthscale,
        noise_variance=noise,
        normalize_y=normalize_y,
        learn_hyperparameters=False,
        standardize=False,
        jitter=jitter,
        num_steps=5,
    ).fit(X, y)
    kernel = ConstantKernel(variance, "fixed") * RBF(lengthscale, "fixed") + WhiteKernel(
        noise, "fixed"
    )
    reference = SkGPR(kernel, alpha=jitter, optimizer=None, normalize_y=normalize_y).fit(X, y)
    mean, std = ours.predict(X_test, return_std=True)
    ref_mean, ref_std = reference.predict(X_test, return_std=True)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(std, ref_std, rtol=1e-7, atol=1e-8)
    # The ELBO at the exact posterior is the log marginal likelihood (in normalised units).
    if not normalize_y:
        np.testing.assert_allclose(ours.elbo_, reference.log_marginal_likelihood_value_, rtol=1e-8)


def test_regressors_refuse_targets_that_are_not_real_numbers_by_name():
    """Reproducer (adversarial probe): a text target failed inside numpy's `std` with a
    dtype error; `None` in an object target was reported as 16 NaNs in `y` (the regressor)
    or as a NaN prior `mean` (Poisson). Numbers written as text are read."""
    X = np.random.default_rng(0).normal(size=(10, 2))
    for Estimator in (GaussianProcessRegressor, PoissonProcessRegressor):
        with pytest.raises(ValueError, match=r"`y` must hold real numbers.*'a'"):
            Estimator(num_steps=2).fit(X, np.array(["a"] * 10))
        with pytest.raises(ValueError, match=r"`y` has 1 NaN/inf or missing value.*index 9"):
            Estimator(num_steps=2).fit(X, np.array([1.0] * 9 + [None], dtype=object))
    options = dict(learn_hyperparameters=False, num_steps=2)
    as_text = GaussianProcessRegressor(**options).fit(X, np.array(["1.5"] * 5 + ["2"] * 5))
    as_numbers = GaussianProcessRegressor(**options).fit(X, np.array([1.5] * 5 + [2.0] * 5))
    np.testing.assert_array_equal(as_text.predict(X), as_numbers.predict(X))


def test_regressor_normalises_targets_near_the_largest_float():
    """Reproducer: with targets of order 1e200 `y.std()` overflowed to inf and every
    prediction was NaN. Normalised on `y / max|y|`, the fit equals that of `y / 1e200`
    scaled back."""
    X, y, X_test = _regression_data()
    options = dict(learn_hyperparameters=False, num_steps=2)
    huge = GaussianProcessRegressor(**options).fit(X, 1e200 * y).predict(X_test)
    plain = GaussianProcessRegressor(**options).fit(X, y).predict(X_test)
    np.testing.assert_allclose(huge / 1e200, plain, rtol=1e-10)


def test_regressor_learns_the_marginal_likelihood_maximiser():
    X, y, _ = _regression_data(n=60, seed=1)
    ours = GaussianProcessRegressor(
        noise_variance=0.1, num_steps=400, lr=0.05, standardize=False, normalize_y=False
    ).fit(X - 0.0, y - y.mean())
    kernel = ConstantKernel(1.0) * RBF(np.ones(2)) + WhiteKernel(0.1)
    reference = SkGPR(kernel, alpha=1e-6, n_restarts_optimizer=2, random_state=0)
    reference.fit(X, y - y.mean())
    # Type-II ML: the learned ELBO (= log marginal likelihood) reaches sklearn's L-BFGS optimum.
    assert ours.elbo_ > reference.log_marginal_likelihood_value_ - 0.05
    noise = reference.kernel_.k2.noise_level
    np.testing.assert_allclose(ours.noise_variance_, noise, rtol=0.2)


def test_poisson_regressor_recovers_the_rate():
    rng = np.random.default_rng(0)
    X = np.sort(rng.uniform(0, 10, size=100))[:, None]
    rate = np.exp(1.0 + np.sin(X[:, 0]))
    y = rng.poisson(rate)
    model = PoissonProcessRegressor(num_steps=80, lr=0.1, random_state=0).fit(X, y)
    predicted = model.predict(X)
    assert np.all(predicted > 0)
    # Far better than the constant-rate fit, and within ~20% of the truth on average.
    assert np.mean(np.abs(predicted - rate) / rate) < 0.2
    assert np.mean((predicted - rate) ** 2) < 0.2 * np.mean((y.mean() - rate) ** 2)
    with pytest.raises(ValueError, match="non-negative"):
        PoissonProcessRegressor(num_steps=2).fit(X[:5], [-0.5, 1, 2, 3, 4])


def test_get_set_params_round_trip():
    clf = GaussianProcessClassifier(kernel="matern32", lengthscale=0.3, likelihood="logit")
    params = clf.get_params()
    assert params["kernel"] == "matern32" and params["lengthscale"] == 0.3
    other = GaussianProcessClassifier().set_params(**params)
    assert other.get_params() == params
    assert clone(clf).get_params() == params
    reg = GaussianProcessRegressor(noise_variance=0.2, normalize_y=False)
    assert GaussianProcessRegressor(**reg.get_params()).get_params() == reg.get_params()


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_random_state_reproducible(banana_split):
    X, y, X_test, _ = banana_split
    fits = [
        GaussianProcessClassifier(num_steps=10, random_state=seed).fit(X[:40], y[:40])
        for seed in (3, 3)
    ]
    np.testing.assert_array_equal(fits[0].predict_proba(X_test), fits[1].predict_proba(X_test))
    np.testing.assert_array_equal(fits[0].lengthscale_, fits[1].lengthscale_)


def test_bad_parameters_raise_clear_errors(banana_split):
    X, y, _, _ = banana_split
    with pytest.raises(ValueError, match="kernel"):
        GaussianProcessClassifier(kernel="cubic").fit(X[:10], y[:10])
    with pytest.raises(ValueError, match="likelihood"):
        GaussianProcessClassifier(likelihood="cauchit").fit(X[:10], y[:10])
    with pytest.raises(ValueError, match="lengthscale"):
        GaussianProcessClassifier(lengthscale=[1.0, 2.0, 3.0]).fit(X[:10], y[:10])
    with pytest.raises(ValueError, match="multi_class"):
        GaussianProcessClassifier(multi_class="ovr").fit(X[:10], y[:10])
    for bad in (0, 2.5, "many"):
        with pytest.raises(ValueError, match="num_inducing"):
            GaussianProcessClassifier(num_inducing=bad).fit(X[:10], y[:10])


def test_float64_inside_without_switching_jax_globally():
    # conftest turns x64 on for the test session, so check in a fresh interpreter.
    code = (
        "import jax, jax.numpy as jnp, numpy as np\n"
        "from ngvi.sklearn import GaussianProcessClassifier\n"
        "X = np.linspace(-2, 2, 12)[:, None]; y = (X[:, 0] > 0).astype(int)\n"
        "clf = GaussianProcessClassifier(learn_hyperparameters=False, num_steps=5).fit(X, y)\n"
        "p = clf.predict_proba(X)\n"
        "assert p.dtype == np.float64 and clf.posterior_.lam1.dtype == jnp.float64\n"
        "assert jnp.zeros(()).dtype == jnp.float32, 'x64 leaked into the global config'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


# -- several classes ------------------------------------------------------------------------
def _three_classes(n, seed):
    """Three Gaussian blobs in 2-D (centres on a triangle of side 3, unit spread)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [3.0, 0.0], [1.5, 2.6]])
    labels = rng.integers(0, 3, n)
    return centres[labels] + 0.8 * rng.standard_normal((n, 2)), labels


@pytest.fixture(scope="module")
def three_class_fit():
    X, labels = _three_classes(90, seed=0)
    X_test, labels_test = _three_classes(300, seed=1)
    names = np.array(["setosa", "versicolor", "virginica"])
    options = dict(learn_hyperparameters=False, num_steps=20, random_state=0)
    named = GaussianProcessClassifier(**options).fit(X, names[labels])
    numeric = GaussianProcessClassifier(**options).fit(X, 10 * labels + 7)
    return named, numeric, X_test, names[labels_test], labels_test


def test_multiclass_probabilities_compile_once_per_bucket_of_rows(three_class_fit, caplog):
    """The class probabilities are one compiled program; the rows are padded to the
    estimators' bucket sizes, so 41 rows after 45 (one bucket) compile nothing new (the
    numpy sampler they replaced compiled nothing, and the first version of the compiled one
    compiled for every number of rows)."""
    import logging

    import jax

    named, _, X_test, _, _ = three_class_fit
    first = named.predict_proba(X_test[:45])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jax"), jax.log_compiles(True):
        again = named.predict_proba(X_test[:41])
    compiled = [r.getMessage() for r in caplog.records if "_class_probabilities" in r.getMessage()]
    assert not compiled, compiled
    np.testing.assert_allclose(again, first[:41], rtol=1e-12)


def test_multiclass_string_labels_probabilities_and_classes(three_class_fit):
    named, numeric, X_test, names_test, labels_test = three_class_fit
    np.testing.assert_array_equal(named.classes_, ["setosa", "versicolor", "virginica"])
    np.testing.assert_array_equal(numeric.classes_, [7, 17, 27])
    proba = named.predict_proba(X_test)
    assert proba.shape == (len(X_test), 3) and proba.dtype == np.float64
    assert np.all(proba >= 0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # one posterior over three latents, whatever the labels are called
    np.testing.assert_array_equal(proba, numeric.predict_proba(X_test))
    assert named.model_.likelihood.num_latent == 3
    np.testing.assert_array_equal(named.predict(X_test), named.classes_[proba.argmax(1)])
    # Blobs one unit apart in sd: the Bayes classifier errs on about 7% of points; a constant
    # predictor at the class frequencies has NLPD log 3 = 1.10.
    assert named.score(X_test, names_test) > 0.85
    nlpd = -np.mean(np.log(proba[np.arange(len(labels_test)), labels_test]))
    assert nlpd < 0.4


def test_multiclass_probabilities_do_not_depend_on_the_other_rows(three_class_fit):
    named, _, X_test, _, _ = three_class_fit
    proba = named.predict_proba(X_test)
    order = np.random.default_rng(2).permutation(len(X_test))
    np.testing.assert_allclose(named.predict_proba(X_test[order]), proba[order], rtol=1e-12)
    np.testing.assert_allclose(named.predict_proba(X_test[:7]), proba[:7], rtol=1e-12)


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_multiclass_sparse_and_robust_max():
    X, labels = _three_classes(80, seed=4)
    X_test, labels_test = _three_classes(200, seed=5)
    options = dict(learn_hyperparameters=False, random_state=0)
    sparse = GaussianProcessClassifier(num_inducing=16, num_steps=40, **options).fit(X, labels)
    dense = GaussianProcessClassifier(num_inducing=None, num_steps=20, **options).fit(X, labels)
    robust = GaussianProcessClassifier(multi_class="robustmax", num_steps=60, **options)
    robust.fit(X, labels)
    assert isinstance(sparse.model_, ngvi.SparseModel) and sparse.model_.num_inducing == 16
    assert isinstance(dense.model_, ngvi.Model)
    assert isinstance(robust.model_.likelihood, ngvi.likelihoods.RobustMax)
    for clf in (sparse, dense, robust):
        proba = clf.predict_proba(X_test)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
        assert clf.score(X_test, labels_test) > 0.85


def test_poisson_regressor_accepts_real_non_negative_targets():
    """Issue 14: like scikit-learn's PoissonRegressor, real rates are valid targets; with a
    constant target the fitted rate is that constant (the Poisson quasi-likelihood is
    maximised by rate = y)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-2, 2, size=(60, 1))
    y = np.full(60, 2.5)
    model = PoissonProcessRegressor(num_steps=50, random_state=0).fit(X, y)
    assert np.allclose(model.predict(X[:5]), 2.5, rtol=0.1)
    with pytest.raises(ValueError, match="non-negative"):
        PoissonProcessRegressor().fit(X, -y)


def test_core_poisson_keeps_integer_counts_by_default():
    with pytest.raises(ValueError, match="integer_counts=False"):
        ngvi.likelihoods.Poisson().prepare_targets(np.array([1.0, 2.5]))
    y = np.array([0.0, 2.5, 7.25])
    lik = ngvi.likelihoods.Poisson(integer_counts=False)
    f = np.array([0.3, -0.2, 1.5])
    expected = y * f - np.exp(f) - scipy.special.gammaln(y + 1)  # independent: numpy/scipy
    np.testing.assert_allclose(lik.log_prob(jnp.asarray(f), lik.prepare_targets(y)), expected)


@pytest.mark.parametrize(
    "estimator", [GaussianProcessClassifier, GaussianProcessRegressor, PoissonProcessRegressor]
)
def test_sample_weight_is_refused_with_the_reason(estimator):
    X, y = np.zeros((4, 1)), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="does not support `sample_weight`"):
        estimator().fit(X, y, sample_weight=np.ones(4))
    with pytest.raises(TypeError, match="unexpected keyword"):
        estimator().fit(X, y, weights=np.ones(4))


_X64_OFF_PICKLE = """
import pickle, numpy as np, jax
assert not jax.config.jax_enable_x64
from ngvi.sklearn import (GaussianProcessClassifier, GaussianProcessRegressor,
                          PoissonProcessRegressor)
rng = np.random.default_rng(0)
X = rng.normal(size=(40, 2))
targets = ((X[:, 0] > 0).astype(int), np.sin(X[:, 0]), rng.poisson(2.0, 40))
for make, y in zip((GaussianProcessClassifier, GaussianProcessRegressor,
                    PoissonProcessRegressor), targets):
    est = make(num_steps=5, random_state=0, learn_hyperparameters=False).fit(X, y)
    again = pickle.loads(pickle.dumps(est))
    predict = "predict_proba" if hasattr(est, "predict_proba") else "predict"
    a, b = getattr(est, predict)(X), getattr(again, predict)(X)
    assert a.dtype == b.dtype == np.float64 and np.all(np.isfinite(b)), make.__name__
    assert np.array_equal(a, b), (make.__name__, np.max(np.abs(a - b)))
print("OK")
"""


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_pickled_estimators_predict_identically_without_x64():
    """Regression (issue 14): without `jax_enable_x64` an unpickled estimator came back in
    float32, and the regressor's predictions were NaN."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _X64_OFF_PICKLE],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


_X64_OFF_CHECKS = """
import jax, warnings
assert not jax.config.jax_enable_x64
from sklearn.utils.estimator_checks import check_estimator
from ngvi.sklearn import (GaussianProcessClassifier, GaussianProcessRegressor,
                          PoissonProcessRegressor)
for make in (GaussianProcessClassifier, GaussianProcessRegressor, PoissonProcessRegressor):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(make(num_steps=5, random_state=0, learn_hyperparameters=False))
print("OK")
"""


@pytest.mark.slow
def test_estimator_checks_pass_without_x64():
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    done = subprocess.run(
        [sys.executable, "-c", _X64_OFF_CHECKS],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


def test_robust_max_estimator_says_when_its_probabilities_are_inaccurate(monkeypatch):
    # Found by an adversarial probe: `ngvi.predict` warned when RobustMax's quadrature of the
    # class probabilities is off (one class's latent much wider than another's: 0.05 at 20
    # nodes here, against the exact two-class value), but the estimator's `predict_proba`,
    # which computes them itself, was silent.
    X, labels = _three_classes(30, seed=4)
    options = dict(learn_hyperparameters=False, random_state=0, num_steps=5)
    robust = GaussianProcessClassifier(multi_class="robustmax", **options).fit(X, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        robust.predict_proba(X)  # moderate latent spreads: accurate, and silent
    sharp = (np.array([[-1.0, 0.0, -30.0]]), np.array([[4.0, 0.01, 0.01]]))
    monkeypatch.setattr(GaussianProcessClassifier, "_predict_latent", lambda self, X: sharp)
    with pytest.warns(UserWarning, match="predict_proba: RobustMax's 20-node quadrature"):
        robust.predict_proba(X[:1])
