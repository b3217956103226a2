"""BLR: Monte Carlo natural-gradient VI, its delta (Newton/Laplace) variant and safeguards.

Truth comes from elsewhere: the VI optimum from `NaturalGradient` (quadrature), the Laplace
point from numpy (`K^-1`, probit derivatives from scipy), the mean-field optimum from the
stationarity of the exact ELBO (for the GP: L-BFGS on a numpy/Gauss-Hermite mean-field ELBO),
and backoffs from a closed-form quadratic or closed-form Student-t Hessians.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import count_fit_step_traces, student_t_outliers_model, tutorial_model
from scipy.optimize import minimize
from scipy.special import log_ndtr
from scipy.stats import norm

import ngvi

DECAY = optax.exponential_decay(1.0, transition_steps=40, decay_rate=0.5, end_value=0.01)


def _fit(model, optimizer, num_steps, seed=0):
    key = jax.random.PRNGKey(seed)
    return ngvi.fit(model, optimizer, num_steps, key=key, tol=0.0, progress=False)


def _start(model, optimizer, q=None):
    """`(q, state)` for calling `optimizer.step` directly (the model's family at the prior by
    default)."""
    q = model.init_variational(optimizer.form) if q is None else q
    return optimizer.init(model, q)


def _mean_and_sd(model, q):
    """Posterior mean and standard deviations in the model's coordinates (one latent)."""
    mean, covariance = model.posterior(q)
    return np.asarray(mean[0]), np.sqrt(np.diagonal(np.asarray(covariance[0])))


def _retreats(elbo, tolerance):
    """Where the natural step retreats: the ELBO is below that of the point the previous step
    moved from by more than `tolerance * (1 + |ELBO|)` (a retreat keeps that point)."""
    retreats = np.zeros(elbo.shape[0], dtype=bool)
    base = -np.inf
    for k, value in enumerate(elbo):
        retreats[k] = value < base - tolerance * (1.0 + abs(base))
        if not retreats[k]:
            base = value
    return retreats


@pytest.fixture(scope="module")
def tutorial():
    model = tutorial_model()
    optimum = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), 50, progress=False)
    return model, optimum


def test_tutorial_reaches_vi_optimum(tutorial):
    model, optimum = tutorial
    result = _fit(model, ngvi.BLR(lr=DECAY, num_samples=32), 200)
    assert np.all(np.isfinite(result.history.elbo))
    # probit is log-concave: every Monte Carlo E[H_ii] <= 0, so no step is ever shortened
    # (nor does the ELBO ever fall enough to retreat)
    assert int(np.sum(result.history.num_backoffs)) == 0
    gap = float(optimum.elbo - result.elbo)
    # The optimum is the unique maximiser of the exact ELBO, so the gap is >= 0 (up to
    # quadrature error) and MC noise keeps it small.
    assert -1e-6 < gap < 0.01
    assert float(result.elbo) == pytest.approx(float(model.elbo(result.q)), abs=1e-10)


def test_delta_is_laplace(tutorial):
    model, optimum = tutorial
    result = ngvi.fit(model, ngvi.BLR(lr=1.0, delta=True), 50, progress=False)
    assert result.converged
    y = 2.0 * np.asarray(model.y) - 1.0  # labels are stored in {0, 1}
    K = np.asarray(model.prior.covariance(model.X))
    posterior_mean, posterior_cov = result.posterior  # of f(X)
    mode = np.asarray(posterior_mean[0])
    # probit log p = log Phi(y f): g = y phi / Phi, H = -(g^2 + y f g)  (y in {-1, 1})
    z = y * mode
    ratio = norm.pdf(z) / norm.cdf(z)
    g = y * ratio
    W = ratio**2 + z * ratio
    grad_log_joint = g - np.linalg.solve(K, mode)
    assert np.max(np.abs(grad_log_joint)) < 1e-6 * (1 + np.max(np.abs(g)))
    laplace_cov = np.linalg.inv(np.linalg.inv(K) + np.diag(W))
    np.testing.assert_allclose(posterior_cov[0], laplace_cov, atol=1e-7)
    assert float(result.elbo) < float(optimum.elbo) - 1e-3  # Laplace is not the VI optimum


def _logistic_data(n=200, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim))
    X[:, 1:] += 0.5 * X[:, :1]  # correlated columns: the mean-field mean differs from full
    w = rng.normal(size=dim)
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-X @ w))).astype(float)
    return X, y


@pytest.fixture(scope="module")
def logistic():
    X, y = _logistic_data()
    prior = ngvi.GaussianPrior(jnp.zeros(X.shape[1]), 1.0)
    likelihood = ngvi.likelihoods.BernoulliLogit()
    dense = ngvi.Model(prior, likelihood, X, y)
    # isotropic prior: mean field over the whitened weights v = w is mean field over w
    diagonal = ngvi.Model(prior, likelihood, X, y, family="mean-field")
    reference = ngvi.fit(dense, ngvi.NaturalGradient(lr=1.0), 100, progress=False)
    # the mean-field fixed-point iteration converges linearly: run it to full precision
    reference_diag = ngvi.fit(diagonal, ngvi.NaturalGradient(lr=1.0), 300, tol=0.0, progress=False)
    return dense, diagonal, reference, reference_diag


def _assert_means_agree(model, q, reference_model, reference_q):
    # "MC accuracy": within a tenth of a posterior standard deviation in every coordinate.
    mean, _ = _mean_and_sd(model, q)
    reference_mean, sd = _mean_and_sd(reference_model, reference_q)
    assert np.max(np.abs(mean - reference_mean) / sd) < 0.1


def test_logistic_full_matches_natural_gradient(logistic):
    dense, _, reference, _ = logistic
    result = _fit(dense, ngvi.BLR(lr=DECAY, num_samples=32), 200)
    assert isinstance(result.q, ngvi.DenseGaussianVariational)
    _assert_means_agree(dense, result.q, dense, reference.q)
    assert -1e-8 < float(reference.elbo - result.elbo) < 0.01


def test_logistic_diagonal_matches_mean_field_optimum(logistic):
    # Mean-field means differ from full-covariance means, so BLR on the mean-field model is
    # compared with the natural-gradient fit of the same family, which is first checked to be
    # a stationary point of the exact mean-field ELBO.
    dense, diagonal, reference, reference_diag = logistic

    def elbo(mean, log_sd):
        # the prior is N(0, I), so the whitened coordinates are the weights themselves
        precision = jnp.exp(-2.0 * log_sd)
        q = ngvi.DiagonalGaussianVariational((mean * precision)[None], (-0.5 * precision)[None])
        return diagonal.elbo(q)

    mean, sd = _mean_and_sd(diagonal, reference_diag.q)
    covariance = np.asarray(reference_diag.posterior[1][0])
    np.testing.assert_array_equal(covariance, np.diag(np.diagonal(covariance)))  # mean field
    grads = jax.grad(elbo, argnums=(0, 1))(jnp.asarray(mean), jnp.log(jnp.asarray(sd)))
    assert max(float(jnp.max(jnp.abs(g))) for g in grads) < 1e-5

    result = _fit(diagonal, ngvi.BLR(lr=DECAY, num_samples=32), 200)
    assert isinstance(result.q, ngvi.DiagonalGaussianVariational)
    _assert_means_agree(diagonal, result.q, diagonal, reference_diag.q)
    assert -1e-8 < float(reference_diag.elbo - result.elbo) < 0.01
    # and the mean-field answer is measurably different from the full-covariance one
    assert float(reference.elbo - result.elbo) > 0.1


@pytest.mark.parametrize("family", ["full", "mean-field"])
def test_parametric_model_matches_linear_model(logistic, family):
    # the black-box log-likelihood of all the data against the linear model's optimum of the
    # same family (full: natural gradient; mean field: its checked stationary point)
    dense, diagonal, reference, reference_diag = logistic
    linear, reference = (dense, reference) if family == "full" else (diagonal, reference_diag)
    X, y = dense.X, dense.y
    sign = 2.0 * y - 1.0

    def log_likelihood(w):
        return jnp.sum(jax.nn.log_sigmoid(sign * (X @ w)))

    model = ngvi.ParametricModel(dense.prior, log_likelihood, family=family, num_elbo_samples=256)
    result = _fit(model, ngvi.BLR(lr=DECAY, num_samples=32), 200)
    assert isinstance(result.q, type(reference.q))
    _assert_means_agree(model, result.q, linear, reference.q)
    # same prior, so the same whitened coordinates: the linear model reads q exactly
    assert -1e-8 < float(reference.elbo - linear.elbo(result.q)) < 0.01


def test_backoff_keeps_precision_positive_definite():
    # log p(y | w) = |w|^2 (H = 2 I) with prior N(0, I): from q = prior the target precision
    # is 1 - 2 = -1, so (1 - rho) * 1 + rho * (-1) > 0 needs rho < 1/2: rho = 1 and 1/2 are
    # rejected and rho = 1/4 gives precision 1/2.
    dim = 3
    model = ngvi.ParametricModel(ngvi.GaussianPrior(jnp.zeros(dim), 1.0), lambda w: w @ w)
    optimizer = ngvi.BLR(lr=1.0, num_samples=4)
    q, state = _start(model, optimizer)
    key = jax.random.PRNGKey(0)
    new_q, _, info = optimizer.step(model, q, state, None, jnp.asarray(0), key)
    assert int(info.num_backoffs) == 2
    assert float(info.step_size) == 0.25
    # (prior N(0, I): the whitened coordinates are w itself)
    np.testing.assert_allclose(new_q.precision[0], 0.5 * np.eye(dim), atol=1e-12)
    np.testing.assert_allclose(model.posterior(new_q)[1][0], 2.0 * np.eye(dim), atol=1e-12)
    # with too few backoffs allowed the step is refused and q is kept
    refused = ngvi.BLR(lr=1.0, num_samples=4, max_backoffs=1)
    q, state = _start(model, refused)
    kept, _, info = refused.step(model, q, state, None, jnp.asarray(0), key)
    assert float(info.step_size) == 0.0
    assert eqx.tree_equal(kept.parameters, q.parameters, rtol=0, atol=1e-12)


def test_step_compiles_once(logistic, getkey):
    dense = logistic[0]
    optimizer = ngvi.BLR(lr=DECAY, num_samples=8)
    step = eqx.filter_jit(eqx.debug.assert_max_traces(optimizer.step, max_traces=1))
    q, state = _start(dense, optimizer)
    for count in range(4):
        q, state, info = step(dense, q, state, None, jnp.asarray(count), getkey())
        assert np.isfinite(float(info.elbo))


def test_float32():
    X, y = _logistic_data(n=50, dim=3)
    prior = ngvi.GaussianPrior(np.zeros(3), 1.0)
    model = ngvi.Model(prior, ngvi.likelihoods.BernoulliLogit(), X, y)
    model = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model)
    result = _fit(model, ngvi.BLR(lr=0.5, num_samples=8), 20)
    assert result.q.parameters[0].dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(result.history.elbo)))


def test_bad_input():
    # the model owns the family: BLR refuses to choose one
    for family in ("diagonal", "dense", "mean-field"):
        with pytest.raises(ValueError, match="family"):
            ngvi.BLR(family=family)
    with pytest.raises(ValueError, match="lr"):
        ngvi.BLR(lr=1.5)
    with pytest.raises(ValueError, match="num_samples"):
        ngvi.BLR(num_samples=0)
    with pytest.raises(ValueError, match="mean-field"):
        ngvi.Model(
            ngvi.GaussianPrior(np.zeros(2), 1.0),
            ngvi.likelihoods.BernoulliLogit(),
            np.ones((3, 2)),
            np.ones(3),
            family="diagonal",
        )
    gp = tutorial_model()
    # Adam's moment form cannot be moved by a natural-gradient step
    with pytest.raises(TypeError, match="init_variational"):
        ngvi.fit(gp, ngvi.BLR(), 5, q=gp.init_variational("moments"), progress=False)
    # sites need a latent per data point: a linear model has none
    X, y = _logistic_data(n=20, dim=2)
    prior = ngvi.GaussianPrior(np.zeros(2), 1.0)
    linear = ngvi.Model(prior, ngvi.likelihoods.BernoulliLogit(), X, y)
    with pytest.raises(TypeError, match="SiteGaussianVariational"):
        ngvi.fit(linear, ngvi.BLR(), 5, q=gp.init_variational(), progress=False)


def test_fit_refuses_a_q_of_the_wrong_shape():
    gp = tutorial_model()  # 30 points
    other = ngvi.Model(gp.prior, gp.likelihood, gp.X[:5], gp.y[:5])
    with pytest.raises(ValueError, match="does not fit this model"):
        ngvi.fit(gp, ngvi.BLR(), 5, q=other.init_variational(), progress=False)
    mean_field = ngvi.Model(gp.prior, gp.likelihood, gp.X, gp.y, family="mean-field")
    with pytest.raises(TypeError, match="family='mean-field'"):
        ngvi.fit(mean_field, ngvi.BLR(), 5, q=gp.init_variational(), progress=False)


# --- GP sites: backoff instead of a clip ---------------------------------------------------


def _student_t_hessian(f, y, df, scale):
    """`d^2/df^2 log t_df(y | f, scale) = (df + 1) (r^2 - a) / (a + r^2)^2`, `r = y - f`,
    `a = df scale^2`: positive (not log-concave) where `r^2 > a`."""
    r2, a = (y - f) ** 2, df * scale**2
    return (df + 1.0) * (r2 - a) / (a + r2) ** 2


@pytest.mark.slow  # kept out of the default run's ten minutes (`make test-slow`)
def test_site_backoff_instead_of_clip():
    # Sites W = 1, lam1 = y: the posterior mean stays near the outliers' labels only partly,
    # so at the three outliers the Student-t Hessian at the mean is positive and the target
    # site precision -H is negative. The delta step (H at the mean, no sampling) lets the
    # expected backoff be computed in numpy.
    model = student_t_outliers_model()
    n = model.num_data
    y = np.asarray(model.y)
    q = ngvi.SiteGaussianVariational(jnp.asarray(y)[None], -0.5 * jnp.ones((1, n)))
    optimizer = ngvi.BLR(lr=1.0, delta=True)
    q, state = _start(model, optimizer, q)
    new_q, _, info = optimizer.step(model, q, state, None, jnp.asarray(0), jax.random.PRNGKey(0))

    K = np.asarray(model.prior.covariance(model.X))
    mean = np.linalg.solve(np.linalg.inv(K) + np.eye(n), y)  # prior mean 0, W = 1
    hess = _student_t_hessian(mean, y, 4.0, 0.1)
    assert np.sum(hess > 0) >= 3
    target_w = -hess
    expected_backoffs = next(
        k for k in range(11) if np.all((1 - 0.5**k) * 1.0 + 0.5**k * target_w >= 0)
    )
    assert expected_backoffs >= 1
    rho = 0.5**expected_backoffs
    assert int(info.num_backoffs) == expected_backoffs
    assert float(info.step_size) == rho
    # the accepted step is the plain damped step: nothing clipped
    np.testing.assert_allclose(new_q.site_precision[0], (1 - rho) + rho * target_w, rtol=1e-8)
    grad = (5.0 * (y - mean)) / (0.04 + (y - mean) ** 2)
    target_lam1 = grad - hess * mean
    # (atol: the numpy mean goes through inv(K), cond(K) ~ 1e7 here)
    expected_lam1 = (1 - rho) * y + rho * target_lam1
    np.testing.assert_allclose(new_q.lam1[0], expected_lam1, rtol=1e-8, atol=1e-7)
    assert float(info.min_precision) >= 0.0


@pytest.mark.filterwarnings("ignore:ngvi.fit stopped")
def test_site_backoff_monte_carlo_fit():
    # Monte Carlo steps on a non-log-concave likelihood: backoffs fire, no site precision
    # ever goes negative, nothing is NaN. (Once a site's W is near 0 and its sampled target
    # is negative, no step size is valid and the fit may stop as `stalled`, as for
    # `NaturalGradient`; the posterior kept is the last valid one.)
    model = student_t_outliers_model()
    q = ngvi.SiteGaussianVariational(model.y[None], -0.5 * jnp.ones((1, model.num_data)))
    result = ngvi.fit(
        model,
        ngvi.BLR(lr=0.5, num_samples=8),
        20,
        q=q,
        key=jax.random.PRNGKey(1),
        tol=0.0,
        progress=False,
    )
    assert np.all(np.isfinite(result.history.elbo))
    # precision backoffs fire (`num_backoffs` also counts retreats after an ELBO fall)
    retreats = _retreats(np.asarray(result.history.elbo), 1e-2)
    assert int(np.sum(result.history.num_backoffs)) > int(np.sum(retreats))
    assert float(np.min(result.history.min_precision)) >= 0.0
    assert float(np.min(result.q.site_precision)) >= 0.0
    assert np.isfinite(float(model.elbo(result.q)))


# --- GP mean-field: BLR on Model(..., family="mean-field"), over the whitened u ------------


def _mean_field_model(model):
    """The same GP with the mean-field family over `u`, `f(X) = m0 + chol(K) u`."""
    return ngvi.Model(model.prior, model.likelihood, model.X, model.y, family="mean-field")


def _tutorial_numpy(model):
    """`(m0, K, y in {-1, 1})` for the tutorial model. K is checked against the SE formula in
    numpy, then the prior's own matrix is used: the family builds `f = m0 + chol(K) u` from it,
    and with cond(K) ~ 2e7 a rounding-level change of K moves `chol(K) m` by ~1e-9."""
    x = np.asarray(model.X)[:, 0]
    K_numpy = 1.5 * np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2) + 1e-6 * np.eye(x.size)
    K = np.asarray(model.prior.covariance(model.X))
    np.testing.assert_allclose(K, K_numpy, rtol=1e-12)
    return np.zeros(x.size), K, 2.0 * np.asarray(model.y) - 1.0


def _mean_field_elbo(params, L, y, num_points=60):
    """Exact mean-field ELBO of `f = L u`, `q(u) = N(m, diag(exp(-log_s)))`, probit, and its
    gradient in `(m, log_s)`, by Gauss-Hermite on the marginals of `f`."""
    dim = L.shape[1]
    m, log_s = params[:dim], params[dim:]
    inv_s = np.exp(-log_s)
    mu, var = L @ m, (L**2) @ inv_s
    nodes, weights = np.polynomial.hermite.hermgauss(num_points)
    weights = weights / np.sqrt(np.pi)
    f = mu[:, None] + np.sqrt(2.0 * var)[:, None] * nodes[None, :]
    z = y[:, None] * f
    ratio = np.exp(norm.logpdf(z) - log_ndtr(z))
    expected_log = log_ndtr(z) @ weights
    expected_grad = (y[:, None] * ratio) @ weights
    expected_hess = (-ratio * (z + ratio)) @ weights
    kl = 0.5 * (np.sum(inv_s) + m @ m - dim + np.sum(log_s))
    elbo = np.sum(expected_log) - kl
    grad_m = L.T @ expected_grad - m
    # d var_i / d log_s_d = -L_id^2 / s_d;  d E / d var_i = 1/2 E[H_i]
    grad_log_s = -0.5 * inv_s * ((L**2).T @ expected_hess) - 0.5 * (1.0 - inv_s)
    return elbo, np.concatenate([grad_m, grad_log_s])


@pytest.fixture(scope="module")
def mean_field(tutorial):
    full, optimum = tutorial
    model = _mean_field_model(full)
    m0, K, y = _tutorial_numpy(model)
    L = np.linalg.cholesky(K)
    dim = L.shape[0]

    def loss(params):
        elbo, grad = _mean_field_elbo(params, L, y)
        return -elbo, -grad

    solution = minimize(
        loss,
        np.zeros(2 * dim),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "maxfun": 40000, "gtol": 1e-11, "ftol": 0.0},
    )
    elbo, grad = _mean_field_elbo(solution.x, L, y)
    assert np.max(np.abs(grad)) < 1e-6  # a stationary point of the exact mean-field ELBO
    result = _fit(model, ngvi.BLR(lr=DECAY, num_samples=32), 250)
    return model, optimum, L, y, solution.x, elbo, result


def _family_at(params):
    """`q(u) = N(m, diag(1/s))`, `params = (m, log s)`, in natural parameters (`C = 1`); the
    model supplies `f(X) = m0 + L u` (the library's `L` is its own `chol(K)`)."""
    dim = params.shape[0] // 2
    s = np.exp(params[dim:])
    return ngvi.DiagonalGaussianVariational(
        jnp.asarray(s * params[:dim])[None], jnp.asarray(-0.5 * s)[None]
    )


def test_whitened_diagonal_family_matches_numpy(mean_field):
    # marginals, KL and predictions of q(f) = N(L m, L diag(1/s) L^T) against dense numpy
    model, _, L_numpy, y, _, _, _ = mean_field
    # The family builds f = m0 + L u with the library's own L = chol(K): with cond(K) ~ 2e7 two
    # LAPACK builds' factors differ by up to ~n eps cond(K) ~ 1e-8 relative (5e-10 seen on one
    # CPU), so the algebra is checked against the library's factor, which must itself be a
    # Cholesky factor of K to that bound.
    L = np.asarray(model.prior.factor(model.X))
    K_check = L_numpy @ L_numpy.T
    np.testing.assert_allclose(L @ L.T, K_check, rtol=0, atol=1e-14 * np.max(np.abs(K_check)))
    np.testing.assert_allclose(L, L_numpy, rtol=0, atol=L.shape[0] * 2.2e-16 * 2e7)
    dim = L.shape[0]
    rng = np.random.default_rng(0)
    params = np.concatenate([rng.normal(size=dim), rng.normal(size=dim)])
    q = _family_at(params)
    m, s = params[:dim], np.exp(params[dim:])
    K = L @ L.T
    mean, cov = L @ m, L @ np.diag(1.0 / s) @ L.T
    posterior_mean, posterior_cov = model.posterior(q)  # of f(X)
    np.testing.assert_allclose(posterior_mean[0], mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(posterior_cov[0], cov, rtol=1e-10, atol=1e-12)
    marginals, model_kl = model.latent_marginals_and_kl(q)
    np.testing.assert_allclose(marginals.mean[:, 0], mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(marginals.variance[:, 0], np.diagonal(cov), rtol=1e-10)
    K_inv = np.linalg.inv(K)
    kl = 0.5 * (
        np.trace(K_inv @ cov)
        + mean @ K_inv @ mean
        - dim
        + np.linalg.slogdet(K)[1]
        - np.linalg.slogdet(cov)[1]
    )
    np.testing.assert_allclose(float(model_kl), kl, rtol=1e-6)
    elbo, _ = _mean_field_elbo(params, L, y)
    assert float(model.elbo(q)) == pytest.approx(elbo, abs=1e-6)
    # predictions at new inputs: the GP conditional f* | f integrated against q(f)
    x, x_new = np.asarray(model.X)[:, 0], np.linspace(-3.5, 3.5, 7)
    cross = 1.5 * np.exp(-0.5 * (x[:, None] - x_new[None, :]) ** 2)
    A = np.linalg.solve(K, cross)
    pred = ngvi.predict(model, q, x_new)
    np.testing.assert_allclose(pred.latent_mean, A.T @ mean, atol=1e-7)
    variance = 1.5 - np.sum(A * cross, axis=0) + np.sum(A * (cov @ A), axis=0)
    np.testing.assert_allclose(pred.latent_variance, variance, atol=1e-6)


def test_gp_diagonal_reaches_mean_field_optimum(mean_field):
    model, optimum, L, y, reference, reference_elbo, result = mean_field
    dim = L.shape[0]
    assert isinstance(result.q, ngvi.DiagonalGaussianVariational)
    assert np.all(np.isfinite(result.history.elbo))
    # probit is log-concave: the precision never needs a backoff. The only shortened steps
    # are the mean-field rule's retreats (each counted as one backoff) after the ELBO fell by
    # more than 1% (BLR's Monte Carlo decrease tolerance); there are a few while lr ~ 1.
    backoffs = np.asarray(result.history.num_backoffs)
    np.testing.assert_array_equal(backoffs, _retreats(np.asarray(result.history.elbo), 1e-2))
    # q(u) = N(m, diag(1/s)): eta1 = s m, eta2 = -s / 2
    s = np.asarray(result.q.precision[0])
    m = np.asarray(result.q.eta1[0]) / s
    found = np.concatenate([m, np.log(s)])
    found_elbo, _ = _mean_field_elbo(found, L, y)
    assert float(result.elbo) == pytest.approx(found_elbo, abs=1e-6)
    # MC accuracy: within a tenth of a posterior sd in every coordinate, 1e-2 nats in ELBO
    sd = np.exp(-0.5 * reference[dim:])
    assert np.max(np.abs(m - reference[:dim]) / sd) < 0.1
    np.testing.assert_allclose(np.log(s), reference[dim:], atol=0.1)
    assert -1e-8 < reference_elbo - found_elbo < 0.01
    # the mean field is strictly worse than the full-Gaussian optimum
    assert float(optimum.elbo) - reference_elbo > 0.1


def test_gp_diagonal_compiles_once(getkey):
    model = _mean_field_model(tutorial_model())
    optimizer = ngvi.BLR(lr=DECAY, num_samples=8)
    step = eqx.filter_jit(eqx.debug.assert_max_traces(optimizer.step, max_traces=1))
    q, state = _start(model, optimizer)
    assert isinstance(q, ngvi.DiagonalGaussianVariational)
    for count in range(4):
        q, state, info = step(model, q, state, None, jnp.asarray(count), getkey())
        assert np.isfinite(float(info.elbo))
    flipped = ngvi.Model(model.prior, model.likelihood, model.X, 1.0 - model.y, family="mean-field")
    assert count_fit_step_traces(optimizer, [model, model, flipped]) == 1


def test_gp_diagonal_float32():
    model = _mean_field_model(tutorial_model())
    model = jax.tree.map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, model)
    result = _fit(model, ngvi.BLR(lr=0.3, num_samples=8), 20)
    assert isinstance(result.q, ngvi.DiagonalGaussianVariational)
    assert result.q.parameters[0].dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(result.history.elbo)))
    assert np.all(np.isfinite(np.asarray(ngvi.predict(model, result.q, model.X).latent_mean)))
