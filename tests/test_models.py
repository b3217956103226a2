"""`ngvi.Model`: construction, input validation (before anything compiles), ELBO pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from helpers import numpy_kl, tutorial_data, tutorial_model

import ngvi
from ngvi.likelihoods import Gaussian, Poisson, Probit


def se_prior(**kwargs):
    return ngvi.GPPrior(ngvi.kernels.SquaredExponential(1.0, 0.7), **kwargs)


def tutorial_kernel_matrix(x):
    """`k(X, X) + jitter I` of `tutorial_model` (variance 1.5, lengthscale 1, jitter 1e-6)."""
    return 1.5 * np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2) + 1e-6 * np.eye(len(x))


class Indefinite(ngvi.kernels.AbstractKernel):
    """Not a covariance function: `k(x, x') = -|x - x'|^2` has zero trace, so its Gram
    matrix has a negative eigenvalue."""

    def evaluate(self, x1, x2):
        return -jnp.sum((x1 - x2) ** 2)


class NaNKernel(ngvi.kernels.AbstractKernel):
    def evaluate(self, x1, x2):
        return jnp.log(jnp.sum(x1 - x2))  # log of negative numbers -> NaN


def test_model_dispatch_and_shapes():
    X, y = tutorial_data()
    model = ngvi.Model(se_prior(), Probit(), X, y)
    assert isinstance(model, ngvi.Model) and isinstance(model.data, ngvi.Data)
    assert model.family == "full" and model.num_latent == 1 and model.num_groups == 1
    assert model.X.shape == (30, 1) and model.y.shape == (30,)
    assert model.X.dtype == jnp.float64
    assert model.data.X is model.X and model.data.y is model.y
    assert not model.supports_minibatch
    # {-1, +1} labels are mapped to {0, 1}
    np.testing.assert_array_equal(model.y, (np.asarray(y) > 0).astype(float))
    # y of shape (n, 1) is accepted
    model2 = ngvi.Model(se_prior(), Probit(), np.asarray(X)[:, None], np.asarray(y)[:, None])
    np.testing.assert_array_equal(model2.y, model.y)
    # a dense GP's full family is held as sites, one per latent function and data point
    q = model.init_variational()
    assert isinstance(q, ngvi.SiteGaussianVariational)
    assert q.lam1.shape == (1, 30) and q.lam2.shape == (1, 30)
    gp_mf = ngvi.Model(se_prior(), Probit(), X, y, family="mean-field")
    assert isinstance(gp_mf.init_variational(), ngvi.DiagonalGaussianVariational)
    assert gp_mf.init_variational().eta1.shape == (1, 30)

    linear = ngvi.Model(
        ngvi.GaussianPrior(jnp.zeros(2), 4.0), Gaussian(), np.ones((5, 2)), np.ones(5)
    )
    assert isinstance(linear, ngvi.Model) and linear.family == "full"
    assert linear.num_data == 5 and linear.supports_minibatch
    diag = ngvi.Model(
        ngvi.GaussianPrior(jnp.zeros(2), 4.0),
        Gaussian(),
        np.ones((5, 2)),
        np.ones(5),
        family="mean-field",
    )
    assert isinstance(diag.init_variational(), ngvi.DiagonalGaussianVariational)
    dense = linear.init_variational()
    assert isinstance(dense, ngvi.DenseGaussianVariational)
    assert dense.eta1.shape == (1, 2) and dense.eta2.shape == (1, 2, 2)
    # the moment form Adam moves: full or diagonal scale
    moments = linear.init_variational("moments")
    assert isinstance(moments, ngvi.WhitenedGaussianVariational)
    assert moments.mean.shape == (1, 2) and moments.scale.shape == (1, 2, 2)
    assert diag.init_variational("moments").scale.shape == (1, 2)
    assert model.init_variational(ngvi.Adam().form).scale.shape == (1, 30, 30)
    with pytest.raises(ValueError, match="`form` must be one of"):
        linear.init_variational("sites")
    with pytest.raises(ValueError, match="`family` must be one of"):
        ngvi.Model(se_prior(), Probit(), X, y, family="diagonal")


X5 = np.linspace(0, 1, 5)
Y5 = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
BAD_INPUTS = {
    "mismatched_rows": (dict(X=np.linspace(0, 1, 6)), "same number of rows"),
    "nan_in_X": (dict(X=np.array([0.0, np.nan, 0.5, 0.7, 1.0])), "`X` contains 1 NaN/inf"),
    "inf_in_X": (dict(X=np.array([0.0, 0.1, np.inf, 0.7, 1.0])), "`X` contains 1 NaN/inf"),
    "nan_in_y": (dict(y=np.array([0.0, np.nan, 1.0, 0.0, 1.0])), "`y` contains 1 NaN/inf"),
    "inf_in_y": (dict(y=np.array([0.0, -np.inf, 1.0, 0.0, 1.0])), "`y` contains 1 NaN/inf"),
    "probit_label_3": (dict(y=np.array([0.0, 1.0, 3.0, 0.0, 1.0])), r"found 3 at index 2"),
    "probit_mixed_encoding": (dict(y=np.array([0.0, 1.0, -1.0, 0.0, 1.0])), "mix"),
    "poisson_negative": (
        dict(likelihood=Poisson(), y=np.array([0.0, 2.0, -1.0, 3.0, 1.0])),
        r"non-negative integers; found -1 at index 2",
    ),
    "poisson_non_integer": (
        dict(likelihood=Poisson(), y=np.array([0.0, 2.5, 1.0, 3.0, 1.0])),
        r"non-negative integers; found 2.5 at index 1",
    ),
    "X_3d": (dict(X=np.zeros((5, 1, 1))), r"shape \(n,\) or \(n, d\)"),
    "y_2d": (dict(y=np.zeros((5, 2))), r"`y` must have shape \(n,\)"),
    "non_numeric": (dict(X=np.array(["a", "b", "c", "d", "e"])), "`X` must be numeric"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_inputs_raise_before_fitting(case):
    overrides, match = BAD_INPUTS[case]
    arguments = dict(prior=se_prior(), likelihood=Probit(), X=X5, y=Y5) | overrides
    with pytest.raises(ValueError, match=match):
        ngvi.Model(**arguments)


# A kernel matrix that is not numerically positive definite is no longer refused by `Model`
# (which never forms it) but by `fit`, which names it (`model.diagnose`).
BAD_KERNELS = {
    "indefinite_kernel": dict(prior=ngvi.GPPrior(Indefinite())),
    "nan_kernel": dict(prior=ngvi.GPPrior(NaNKernel())),
    "duplicates_tiny_jitter": dict(
        X=np.array([0.0, 0.0, 0.5, 0.5, 1.0]), prior=se_prior(jitter=1e-20)
    ),
}
FIT_TIME_CASES = [
    pytest.param(case, family, strategy, id=f"{case}-{family}-{type(strategy).__name__}")
    for case in BAD_KERNELS
    for family in ("full", "mean-field")
    for strategy in (ngvi.NaturalGradient(), ngvi.Adam())
]


@pytest.mark.parametrize("case, family, strategy", FIT_TIME_CASES)
def test_bad_kernel_matrix_is_refused_by_fit(case, family, strategy):
    arguments = dict(prior=se_prior(), likelihood=Probit(), X=X5, y=Y5) | BAD_KERNELS[case]
    model = ngvi.Model(**arguments, family=family)  # no longer refused here
    assert "not numerically positive definite" in model.diagnose(model.init_variational())
    with pytest.raises(ValueError, match="not numerically positive definite"):
        ngvi.fit(model, strategy, num_steps=5, progress=False)


def test_nan_kernel_matrix_is_named_as_such():
    model = ngvi.Model(ngvi.GPPrior(NaNKernel()), Probit(), X5, Y5)
    with pytest.raises(ValueError, match="NaN/inf") as error:
        ngvi.fit(model, ngvi.NaturalGradient(), num_steps=5, progress=False)
    assert "about nan" not in str(error.value)


def test_diagnose_is_silent_for_a_valid_model():
    model = ngvi.Model(se_prior(), Probit(), X5, Y5)
    assert model.diagnose(model.init_variational()) == ""


def test_duplicate_inputs_with_default_jitter_are_fine():
    model = ngvi.Model(se_prior(), Probit(), np.array([0.0, 0.0, 0.5, 0.5, 1.0]), Y5)
    result = ngvi.fit(model, ngvi.NaturalGradient(), num_steps=20, progress=False)
    assert np.isfinite(float(result.elbo))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ngvi.kernels.SquaredExponential(variance=0.0), "`variance` must be positive"),
        (lambda: ngvi.kernels.SquaredExponential(variance=-1.0), "`variance` must be positive"),
        (lambda: ngvi.kernels.Matern32(lengthscale=0.0), "`lengthscale` must be positive"),
        (lambda: ngvi.kernels.Matern52(lengthscale=-2.0), "`lengthscale` must be positive"),
        (lambda: ngvi.kernels.SquaredExponential(lengthscale=np.nan), "`lengthscale` must be"),
        (lambda: se_prior(jitter=0.0), "`jitter` must be positive"),
        (lambda: se_prior(jitter=-1e-6), "`jitter` must be positive"),
        (lambda: Gaussian(variance=0.0), "`variance` must be positive"),
        (lambda: Poisson(exposure=np.array([1.0, -1.0])), "`exposure` must be positive"),
        (lambda: ngvi.GaussianPrior(jnp.zeros(2), -1.0), "not positive definite"),
    ],
)
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_linear_model_checks():
    prior = ngvi.GaussianPrior(jnp.zeros(3), 4.0)
    with pytest.raises(ValueError, match="3 columns|dimension 3"):
        ngvi.Model(prior, Gaussian(), np.ones((5, 2)), np.ones(5))
    with pytest.raises(TypeError, match="AbstractLikelihood"):
        ngvi.Model(prior, object(), np.ones((5, 3)), np.ones(5))
    with pytest.raises(TypeError, match="GPPrior or a GaussianPrior"):
        ngvi.Model(object(), Gaussian(), np.ones((5, 3)), np.ones(5))


def test_bad_inputs_fail_before_any_trace(monkeypatch):
    """Validation happens on the host: the likelihood's (traceable) log_prob is never
    called and no fit loop is reached."""
    calls = []
    monkeypatch.setattr(Probit, "log_prob", lambda self, f, y: calls.append(1))
    with pytest.raises(ValueError):
        ngvi.Model(se_prior(), Probit(), X5, np.array([0.0, 1.0, 3.0, 0.0, 1.0]))
    assert calls == []


def gp_problem():
    model = tutorial_model()
    rng = np.random.default_rng(0)
    lam1 = rng.normal(size=30)
    W = rng.uniform(0.0, 2.0, size=30)
    q = ngvi.SiteGaussianVariational(jnp.asarray(lam1)[None], jnp.asarray(-0.5 * W)[None])
    K = tutorial_kernel_matrix(np.asarray(model.X[:, 0]))
    Kinv = np.linalg.inv(K)
    Sigma = np.linalg.inv(Kinv + np.diag(W))
    mu = Sigma @ lam1  # zero prior mean
    return model, q, K, mu, Sigma


def test_gp_model_prior_and_variational():
    model = tutorial_model()
    K = tutorial_kernel_matrix(np.asarray(model.X[:, 0]))
    q0 = model.init_variational()
    view = model.site_view(None)
    np.testing.assert_allclose(view.covariance, K, rtol=1e-12)
    np.testing.assert_array_equal(view.mean, 0.0)
    np.testing.assert_array_equal(q0.lam1, 0.0)
    np.testing.assert_array_equal(q0.lam2, 0.0)
    mean, covariance = model.posterior(q0)
    assert mean.shape == (1, 30) and covariance.shape == (1, 30, 30)
    np.testing.assert_allclose(covariance[0], K, rtol=1e-12)
    np.testing.assert_array_equal(mean[0], 0.0)
    # the natural target of the sites: (E[g] - E[H] mu, E[H] / 2), the data term times `scale`
    rng = np.random.default_rng(5)
    m = rng.normal(size=(30, 1))
    g = rng.normal(size=(30, 1))
    h = -rng.uniform(0.1, 2.0, size=(30, 1))
    marginals = ngvi.Marginals(jnp.asarray(m), jnp.ones((30, 1)))
    statistics = ngvi.SiteStatistics(jnp.zeros(30), jnp.asarray(g), jnp.asarray(h))
    for scale in (1.0, 2.5):
        lam1, lam2 = model.natural_target(q0, None, marginals, statistics, scale)
        assert lam1.shape == (1, 30) and lam2.shape == (1, 30)
        np.testing.assert_allclose(lam1[0], scale * (g - h * m)[:, 0], rtol=1e-14)
        np.testing.assert_allclose(lam2[0], 0.5 * scale * h[:, 0], rtol=1e-14)
    # a dense GP's latent is all its data: no minibatches
    with pytest.raises(ValueError, match="fits all its data at once"):
        model.latent_marginals_and_kl(q0, model.data[:5])


def test_gp_model_elbo_against_gauss_hermite():
    """`model.elbo` == independent 60-point Gauss-Hermite of log Phi minus the dense KL."""
    model, q, K, mu, Sigma = gp_problem()
    marginals, kl = model.latent_marginals_and_kl(q)
    assert marginals.mean.shape == (30, 1) and marginals.variance.shape == (30, 1)
    np.testing.assert_allclose(marginals.mean[:, 0], mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(marginals.variance[:, 0], np.diag(Sigma), rtol=1e-6, atol=1e-8)
    mean, covariance = model.posterior(q)
    np.testing.assert_allclose(mean[0], mu, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(covariance[0], Sigma, rtol=1e-6, atol=1e-8)
    want_kl = numpy_kl(mu, Sigma, np.zeros(30), K)
    np.testing.assert_allclose(kl, want_kl, rtol=1e-5)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    sign = 2 * np.asarray(model.y) - 1
    f = mu[:, None] + np.sqrt(np.diag(Sigma))[:, None] * nodes[None, :]
    expected = (scipy.special.log_ndtr(sign[:, None] * f) * weights).sum()
    np.testing.assert_allclose(model.elbo(q), expected - want_kl, rtol=1e-6)


def linear_pieces_problem():
    rng = np.random.default_rng(1)
    n, dim = 8, 3
    X = rng.normal(size=(n, dim))
    y = rng.normal(size=n)
    cov0 = np.diag([4.0, 2.0, 1.0])
    m0 = np.array([0.5, -0.2, 0.0])
    g = rng.normal(size=n)  # per-point E[g], E[H] handed to natural_target
    h = -rng.uniform(0.2, 2.0, size=n)
    return rng, X, y, cov0, m0, g, h


def statistics_of(g, h):
    return ngvi.SiteStatistics(jnp.zeros(len(g)), jnp.asarray(g)[:, None], jnp.asarray(h)[:, None])


def test_linear_model_pieces():
    """Full family of a linear model: whitened coordinates `w = m0 + L0 v`; the natural target,
    marginals, KL and ELBO against weight-space formulas with explicit inverses."""
    rng, X, y, cov0, m0, g, h = linear_pieces_problem()
    dim = 3
    model = ngvi.Model(ngvi.GaussianPrior(jnp.asarray(m0), jnp.asarray(cov0)), Gaussian(0.5), X, y)
    L0 = np.linalg.cholesky(cov0)
    L0inv = np.linalg.inv(L0)
    P0 = np.linalg.inv(cov0)
    q0 = model.init_variational()
    mean0, cov_0 = model.posterior(q0)
    np.testing.assert_allclose(mean0[0], m0, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(cov_0[0], cov0, rtol=1e-13)

    # a q away from the prior: whitened N(mu_v, Sigma_v), in weights N(m0 + L0 mu_v, ...)
    a = rng.normal(size=(dim, dim))
    Sigma_v = a @ a.T / dim + 0.5 * np.eye(dim)
    mu_v = rng.normal(size=dim)
    P_v = np.linalg.inv(Sigma_v)
    q = ngvi.DenseGaussianVariational(jnp.asarray(P_v @ mu_v)[None], jnp.asarray(-0.5 * P_v)[None])
    mu_w = m0 + L0 @ mu_v
    np.testing.assert_allclose(model.posterior(q)[0][0], mu_w, rtol=1e-12)
    np.testing.assert_allclose(model.posterior(q)[1][0], L0 @ Sigma_v @ L0.T, rtol=1e-12)

    for batch_index in (None, np.array([1, 4, 6])):
        batch = None if batch_index is None else model.data[batch_index]
        rows = slice(None) if batch_index is None else batch_index
        Xb, gb, hb = X[rows], g[rows], h[rows]
        scale = 1.0 if batch is None else 8 / 3
        marginals, _ = model.latent_marginals_and_kl(q, batch)
        np.testing.assert_allclose(marginals.mean[:, 0], Xb @ mu_w, rtol=1e-12)
        target = model.natural_target(q, batch, marginals, statistics_of(gb, hb), scale)
        # Weight space: eta_prior + scale * X^T (site), site = (g - h X mu_w, h / 2).
        eta1_w = P0 @ m0 + scale * Xb.T @ (gb - hb * (Xb @ mu_w))
        P_w = P0 - scale * Xb.T @ np.diag(hb) @ Xb
        mean_t = np.linalg.inv(P_w) @ eta1_w
        # ... and in v = L0^-1 (w - m0): precision L0^T P_w L0
        P_vt = L0.T @ P_w @ L0
        np.testing.assert_allclose(target[0][0], P_vt @ (L0inv @ (mean_t - m0)), rtol=1e-10)
        np.testing.assert_allclose(target[1][0], -0.5 * P_vt, rtol=1e-12)

    target_q = q.with_parameters(target)
    # the last target (a batch of 3, scaled) read back in weight space
    mean_t_model, cov_t_model = model.posterior(target_q)
    Sigma = np.linalg.inv(P_w)
    mu = mean_t
    np.testing.assert_allclose(mean_t_model[0], mu, rtol=1e-10)
    np.testing.assert_allclose(cov_t_model[0], Sigma, rtol=1e-10)
    marginals, kl = model.latent_marginals_and_kl(target_q)
    np.testing.assert_allclose(marginals.mean[:, 0], X @ mu, rtol=1e-10)
    np.testing.assert_allclose(marginals.variance[:, 0], np.diag(X @ Sigma @ X.T), rtol=1e-10)
    want_kl = numpy_kl(mu, Sigma, m0, cov0)
    np.testing.assert_allclose(kl, want_kl, rtol=1e-10)
    want_elbo = (
        np.sum(
            scipy.stats.norm.logpdf(y, X @ mu, np.sqrt(0.5)) - np.diag(X @ Sigma @ X.T) / (2 * 0.5)
        )
        - want_kl
    )
    np.testing.assert_allclose(model.elbo(target_q), want_elbo, rtol=1e-10)
    # on a batch the ELBO is the unbiased estimate: data term scaled by N / B
    batch = model.data[np.array([0, 2, 3, 7])]
    rows = np.array([0, 2, 3, 7])
    want_batch = (
        2.0
        * np.sum(
            scipy.stats.norm.logpdf(y[rows], X[rows] @ mu, np.sqrt(0.5))
            - np.diag(X[rows] @ Sigma @ X[rows].T) / (2 * 0.5)
        )
        - want_kl
    )
    np.testing.assert_allclose(model.elbo(target_q, batch), want_batch, rtol=1e-10)


def test_linear_model_mean_field_target():
    """Mean field over whitened weights; with a diagonal prior covariance this is mean field over
    the weights themselves, so the target is the weight-space diagonal BLR step with lr = 1:
    g_bar = X^T E[g] - P0 (mu - m0), h_bar = diag(X^T diag(E[H]) X) - diag(P0),
    s_new = -h_bar, mu_new = mu + g_bar / s_new."""
    rng, X, y, cov0, m0, g, h = linear_pieces_problem()
    model = ngvi.Model(
        ngvi.GaussianPrior(jnp.asarray(m0), jnp.asarray(cov0)),
        Gaussian(0.5),
        X,
        y,
        family="mean-field",
    )
    l0 = np.sqrt(np.diag(cov0))  # chol of a diagonal covariance
    P0 = np.linalg.inv(cov0)
    s_v = rng.uniform(0.5, 3.0, size=3)
    mu_v = rng.normal(size=3)
    q = ngvi.DiagonalGaussianVariational(
        jnp.asarray(s_v * mu_v)[None], jnp.asarray(-0.5 * s_v)[None]
    )
    mu = m0 + l0 * mu_v
    mean, covariance = model.posterior(q)
    np.testing.assert_allclose(mean[0], mu, rtol=1e-12)
    np.testing.assert_allclose(covariance[0], np.diag(l0**2 / s_v), rtol=1e-12, atol=1e-15)
    marginals, _ = model.latent_marginals_and_kl(q)
    target = model.natural_target(q, None, marginals, statistics_of(g, h), 1.0)
    target_q = q.with_parameters(target)
    g_bar = X.T @ g - P0 @ (mu - m0)
    h_bar = np.diag(X.T @ np.diag(h) @ X) - np.diag(P0)
    s_new = -h_bar
    mean_t, cov_t = model.posterior(target_q)
    np.testing.assert_allclose(mean_t[0], mu + g_bar / s_new, rtol=1e-12)
    np.testing.assert_allclose(cov_t[0], np.diag(1.0 / s_new), rtol=1e-12, atol=1e-15)


def test_model_is_a_pytree_of_arrays():
    """Same-shape data give the same tree structure, so jit does not retrace on new data."""
    model = tutorial_model()
    other = ngvi.Model(model.prior, Probit(), np.asarray(model.X) + 1.0, 1 - np.asarray(model.y))
    assert jax.tree_util.tree_structure(model) == jax.tree_util.tree_structure(other)


FLOAT32_CASES = [
    pytest.param("full", ngvi.NaturalGradient(), id="full-NaturalGradient"),
    pytest.param("full", ngvi.Adam(), id="full-Adam"),
    pytest.param("mean-field", ngvi.NaturalGradient(), id="mean-field-NaturalGradient"),
]


@pytest.mark.parametrize("family, strategy", FLOAT32_CASES)
def test_float32_kernel_matrix_error_suggests_a_jitter(family, strategy):
    # 400 nearly coincident inputs: in float32 the rounding of K swamps a jitter of 1e-6.
    X = np.linspace(0.0, 1e-3, 400)
    y = (X > 5e-4).astype(float)
    with jax.enable_x64(False):
        prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=1.0))
        model = ngvi.Model(prior, Probit(), X, y, family=family)  # no longer refused here
        with pytest.raises(ValueError, match="In float32 the rounding of K alone") as error:
            ngvi.fit(model, strategy, num_steps=5, progress=False)
    assert "not numerically positive definite" in str(error.value)
    assert "jax_enable_x64" in str(error.value)


def test_whitened_families_refuse_a_singular_kernel_matrix():
    # Duplicate inputs and a negligible jitter make K singular, so chol(K) has NaNs; the
    # whitened families (Adam's moments, the mean-field natural family of BLR and
    # NaturalGradient) must say so at fit time, not start from NaN.
    X = jnp.array([[0.0], [0.0], [1.0]])
    y = jnp.array([0.0, 1.0, 1.0])
    prior = ngvi.GPPrior(ngvi.kernels.SquaredExponential(), jitter=1e-300)
    full = ngvi.Model(prior, Probit(), X, y)
    mean_field = ngvi.Model(prior, Probit(), X, y, family="mean-field")
    for model, strategy in (
        (full, ngvi.Adam()),
        (mean_field, ngvi.BLR()),
        (mean_field, ngvi.NaturalGradient()),
    ):
        with pytest.raises(ValueError, match="not numerically positive definite"):
            ngvi.fit(model, strategy, num_steps=3, progress=False)
