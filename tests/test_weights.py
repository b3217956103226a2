"""Per-point weights of the data term (`Model(..., weights=)`), and the estimators' padding of
training sets to bucket sizes with points of weight 0.

Independent truths: a point of weight 0 is a point that is not there (the fit without it), and
an integer weight `k` on a row of a linear model is the row repeated `k` times."""

import logging

import jax
import numpy as np
import pytest

import ngvi
from ngvi.sklearn._base import _padded_training_set, bucket_size

FIT = dict(num_steps=60, tol=1e-12)


def _banana(n: int):
    X, y = ngvi.datasets.banana()
    return np.asarray(X[:n]), np.asarray(y[:n])


def _gp_model(X, y, weights=None, likelihood=None):
    kernel = ngvi.kernels.SquaredExponential(variance=1.5, lengthscale=0.7)
    likelihood = likelihood or ngvi.likelihoods.Probit()
    return ngvi.Model(ngvi.GPPrior(kernel), likelihood, X, y, weights=weights)


def test_zero_weight_points_leave_the_posterior_and_elbo_unchanged():
    # The extra points sit among the data (correlated with it), not only far away.
    X, y = _banana(50)
    extra_X, extra_y = _banana(62)[0][50:], _banana(62)[1][50:]
    alone = ngvi.fit(_gp_model(X, y), ngvi.NaturalGradient(lr=1.0), **FIT)
    weights = np.concatenate([np.ones(50), np.zeros(12)])
    padded_model = _gp_model(np.concatenate([X, extra_X]), np.concatenate([y, extra_y]), weights)
    padded = ngvi.fit(padded_model, ngvi.NaturalGradient(lr=1.0), **FIT)
    assert alone.converged and padded.converged
    np.testing.assert_allclose(float(padded.elbo), float(alone.elbo), rtol=1e-10)
    X_new = np.linspace(-3.0, 3.0, 14).reshape(7, 2)
    a, b = ngvi.predict(alone.model, alone.q, X_new), ngvi.predict(padded_model, padded.q, X_new)
    np.testing.assert_allclose(b.latent_mean, a.latent_mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.latent_variance, a.latent_variance, rtol=1e-8, atol=1e-10)
    # ... and with the weights dropped, the extra points do change the fit (the test can fail).
    unweighted = _gp_model(padded_model.X, padded_model.y)
    assert abs(float(unweighted.elbo(padded.q)) - float(padded.elbo)) > 1.0


def test_integer_weights_are_repeated_rows():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 3))
    y = (X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=30) > 0).astype(float)
    counts = rng.integers(0, 4, size=30)
    prior = ngvi.GaussianPrior(np.zeros(3), 2.0 * np.eye(3))
    likelihood = ngvi.likelihoods.BernoulliLogit()
    repeated = ngvi.Model(prior, likelihood, np.repeat(X, counts, 0), np.repeat(y, counts))
    weighted = ngvi.Model(prior, likelihood, X, y, weights=counts)
    a = ngvi.fit(repeated, ngvi.NaturalGradient(lr=1.0), **FIT)
    b = ngvi.fit(weighted, ngvi.NaturalGradient(lr=1.0), **FIT)
    assert a.converged and b.converged
    np.testing.assert_allclose(float(b.elbo), float(a.elbo), rtol=1e-10)
    np.testing.assert_allclose(b.model.posterior(b.q)[0], a.model.posterior(a.q)[0], rtol=1e-8)


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_learned_hyperparameters_ignore_zero_weight_points():
    X, y = _banana(40)
    X_pad, y_pad, weights = _padded_training_set(X, y)
    assert len(y_pad) == bucket_size(40) == 40  # a multiple of 8: no padding
    X_pad, y_pad, weights = _padded_training_set(X[:37], y[:37])
    assert len(y_pad) == 40 and weights.sum() == 37
    # Logit: its expectations are exact at the wide posteriors a learned signal variance gives.
    logit = ngvi.likelihoods.BernoulliLogit()
    alone = ngvi.fit_hyperparameters(_gp_model(X[:37], y[:37], likelihood=logit))
    padded = ngvi.fit_hyperparameters(_gp_model(X_pad, y_pad, weights, likelihood=logit))
    assert alone.converged and padded.converged
    np.testing.assert_allclose(float(padded.elbo), float(alone.elbo), rtol=1e-9)
    leaves = jax.tree.leaves(alone.model.prior), jax.tree.leaves(padded.model.prior)
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5)


def test_bucket_sizes_are_few_and_close():
    sizes = [bucket_size(n) for n in range(1, 5000)]
    assert all(n <= s <= max(1.07 * n, n + 7) for n, s in enumerate(sizes, start=1))
    assert len(set(sizes)) < 250
    assert bucket_size(455) == bucket_size(456) == 464  # breast cancer's folds: one shape


def test_weights_are_checked():
    X, y = _banana(10)
    with pytest.raises(ValueError, match="non-negative"):
        _gp_model(X, y, -np.ones(10))
    with pytest.raises(ValueError, match=r"shape \(10,\)"):
        _gp_model(X, y, np.ones(9))
    with pytest.raises(ValueError, match="NaN/inf"):
        _gp_model(X, y, np.full(10, np.nan))
    with pytest.raises(ValueError, match="all 0"):  # no data: any hyperparameters "converged"
        _gp_model(X, y, np.zeros(10))


class _Compilations(logging.Handler):
    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        if "Compiling" in record.getMessage():
            self.count += 1


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_estimator_folds_of_neighbouring_sizes_share_one_compiled_fit():
    pytest.importorskip("sklearn")
    from ngvi.sklearn import GaussianProcessClassifier

    X, y = _banana(120)
    estimator = GaussianProcessClassifier(num_steps=30, random_state=0)
    first = estimator.fit(X[:101], y[:101]).predict_proba(X[101:])
    handler = _Compilations()
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            estimator.fit(X[:103], y[:103]).predict_proba(X[103:])
    finally:
        logger.removeHandler(handler)
    assert handler.count == 0
    # The padded fit is the unpadded one: the same learned kernel and probabilities as a fit
    # of the core library on the 101 points alone.
    assert first.shape == (19, 2)
    with jax.enable_x64(True):
        reference = GaussianProcessClassifier(num_steps=30, random_state=0)
        reference.fit(X[:101], y[:101])
        alone = ngvi.fit_hyperparameters(
            ngvi.Model(
                ngvi.GPPrior(reference._make_kernel(2), jitter=1e-6),
                ngvi.likelihoods.Probit(),
                reference._scale_inputs(X[:101], reset=False),
                y[:101],
            ),
            hyperprior=reference._hyperprior(),
            max_steps=30,
        )
        np.testing.assert_allclose(reference.elbo_, float(alone.elbo), rtol=1e-9)
        np.testing.assert_allclose(
            reference.kernel_.lengthscale, alone.model.prior.kernel.lengthscale, rtol=1e-5
        )


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_sparse_weights_full_batch_and_minibatch():
    X, y = (np.asarray(a) for a in ngvi.datasets.banana_large())
    X, y = X[:700], y[:700]
    weights = np.concatenate([np.random.default_rng(4).uniform(0.5, 2.0, 600), np.zeros(100)])
    prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential(1.0, 0.5), jitter=1e-6)

    def sparse(X, y, weights=None):
        return ngvi.SparseModel(
            prior, ngvi.likelihoods.Probit(), X, y, inducing=X[:24], chunk_size=256,
            weights=weights,
        )  # fmt: skip

    weighted = sparse(X, y, weights)
    # The 100 weight-0 rows are not there: the same fit as on the first 600 rows with the
    # same weights (inducing inputs identical: the first 24 rows).
    alone = ngvi.fit(sparse(X[:600], y[:600], weights[:600]), ngvi.NaturalGradient(lr=1.0), **FIT)
    fitted = ngvi.fit(weighted, ngvi.NaturalGradient(lr=1.0), **FIT)
    np.testing.assert_allclose(float(fitted.elbo), float(alone.elbo), rtol=1e-10)
    # Minibatches carry their weights: the N / B-scaled estimates over one epoch average to
    # the full-data ELBO.
    order = np.random.default_rng(5).permutation(700)
    batches = [weighted.data[order[k : k + 100]] for k in range(0, 700, 100)]
    estimates = [float(weighted.elbo(fitted.q, batch)) for batch in batches]
    np.testing.assert_allclose(np.mean(estimates), float(fitted.elbo), rtol=1e-10)
    with pytest.raises(ValueError, match="in-memory data on one device"):
        ngvi.SparseModel(prior, ngvi.likelihoods.Probit(), num_data=10, inducing=X[:4],
                         weights=np.ones(10))  # fmt: skip


def test_kmeans_inducing_inputs_come_from_the_points_that_take_part():
    """Reproducer (adversarial review): `inducing=10` with 300 far-away rows of weight 0 put
    8 of the 10 k-means centres among them, where the fit has no data."""
    rng = np.random.default_rng(0)
    X = np.r_[rng.uniform(-1, 1, (100, 1)), rng.uniform(50, 60, (300, 1))]
    y = (X[:, 0] > 0).astype(float)
    weights = np.r_[np.ones(100), np.zeros(300)]
    prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential())
    model = ngvi.SparseModel(prior, ngvi.likelihoods.Probit(), X, y, inducing=10, weights=weights)
    unweighted = ngvi.SparseModel(prior, ngvi.likelihoods.Probit(), X[:100], y[:100], inducing=10)
    np.testing.assert_array_equal(model.inducing, unweighted.inducing)  # same rows, same seed
