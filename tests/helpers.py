"""Shared problems with known answers."""

import numpy as np

import ngvi


def tutorial_data():
    """The public tutorial's 30-point problem (see `ngvi.datasets.tutorial`)."""
    return ngvi.datasets.tutorial()


def tutorial_model(likelihood=None):
    X, y = tutorial_data()
    kernel = ngvi.kernels.SquaredExponential(variance=1.5, lengthscale=1.0)
    prior = ngvi.GPPrior(kernel, jitter=1e-6)
    return ngvi.Model(prior, likelihood or ngvi.likelihoods.Probit(), X, y)


def banana(n=None):
    """The 400-point banana classification set bundled with the package."""
    X, y = ngvi.datasets.banana()
    return (X, y) if n is None else (X[:n], y[:n])


def student_t_outliers_model(df=4.0, scale=0.1):
    """GP regression with a Student-t likelihood: `sin(2x)` + N(0, 0.1^2) noise on 40 points,
    with three gross outliers (+4, -5, +3.5 at indices 5, 17, 30). The likelihood is not
    log-concave, so `E_q[H]` is positive at the outliers."""
    rng = np.random.default_rng(0)
    X = np.linspace(-3.0, 3.0, 40)
    y = np.sin(2.0 * X) + 0.1 * rng.standard_normal(40)
    y[[5, 17, 30]] += np.array([4.0, -5.0, 3.5])
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=1.0)
    likelihood = ngvi.likelihoods.StudentT(df=df, scale=scale)
    return ngvi.Model(ngvi.GPPrior(kernel), likelihood, X, y)


def numpy_kl(m, S, m0, S0):
    """KL(N(m, S) || N(m0, S0)) by the textbook formula with explicit inverses (tests only)."""
    S0inv = np.linalg.inv(S0)
    d = m - m0
    return 0.5 * (
        np.trace(S0inv @ S)
        + d @ S0inv @ d
        - len(m)
        + np.linalg.slogdet(S0)[1]
        - np.linalg.slogdet(S)[1]
    )


def count_fit_step_traces(strategy, models, num_steps=3):
    """Fit each model with `strategy` (new strategy API: `step(model, q, state, batch,
    step_count, key)`) and return how many times its `step` was traced.

    The counter is a Python side effect in a wrapper's `step`, so it runs only while JAX
    traces; a strategy that compiles once traces once however many same-shaped fits it runs.
    The wrapper forwards `form`, `init`, `terminate` and `smoothing` to the strategy.
    """
    counter = {"traces": 0}
    inner_form = strategy.form

    class TraceCounting(ngvi.AbstractOptimizer):
        inner: ngvi.AbstractOptimizer
        form = inner_form

        @property
        def smoothing(self):
            return self.inner.smoothing

        def init(self, model, q):
            return self.inner.init(model, q)

        def step(self, model, q, state, batch, step_count, key):
            counter["traces"] += 1
            return self.inner.step(model, q, state, batch, step_count, key)

        def terminate(self, history, t, tol):
            return self.inner.terminate(history, t, tol)

    wrapped = TraceCounting(strategy)
    for model in models:
        ngvi.fit(model, wrapped, num_steps=num_steps, tol=0.0, progress=False)
    return counter["traces"]


def robust_max_svgp_optimum(design, conditional, labels, epsilon, num_points=20) -> float:
    """The largest ELBO of a whitened SVGP with the robust-max likelihood, written out here
    independently of the library: `f_b = a_b^T v + e_b`, `e_b ~ N(0, c_b)` (`design` rows
    `a_b`, `conditional` the `c_b`), `q(v) = N(m_c, S_c S_c^T)` per class, the expectation
    `P(y wins)` by its own Gauss-Hermite rule over the labelled score, the KL to `N(0, I)`;
    maximised by L-BFGS-B from the prior."""
    import jax
    import jax.numpy as jnp
    import scipy.optimize

    num_classes = int(np.max(labels)) + 1
    dim = design.shape[1]
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_points)
    weights = weights / weights.sum()
    A, c = jnp.asarray(design), jnp.asarray(conditional)
    onehot = jax.nn.one_hot(np.asarray(labels).astype(int), num_classes)
    tril = np.tril_indices(dim)
    diag = np.flatnonzero(tril[0] == tril[1])
    num_means = num_classes * dim

    def elbo(theta):
        m = theta[:num_means].reshape(num_classes, dim)
        raw = theta[num_means:].reshape(num_classes, len(tril[0]))
        raw = raw.at[:, diag].set(jnp.exp(raw[:, diag]))
        S = jnp.zeros((num_classes, dim, dim)).at[:, tril[0], tril[1]].set(raw)
        mean = A @ m.T
        var = c[:, None] + jnp.sum(jnp.einsum("ij,cjk->cik", A, S) ** 2, -1).T
        sd = jnp.sqrt(var)
        m_y, s_y = jnp.sum(mean * onehot, 1), jnp.sum(sd * onehot, 1)
        f_y = m_y[:, None] + s_y[:, None] * jnp.asarray(nodes)[None, :]
        others = (f_y[:, None, :] - mean[:, :, None]) / sd[:, :, None]
        log_cdf = jax.scipy.stats.norm.logcdf(others) * (1 - onehot)[:, :, None]
        wins = jnp.exp(log_cdf.sum(1)) @ jnp.asarray(weights)
        miss = np.log(epsilon / (num_classes - 1))
        expected = wins * np.log(1 - epsilon) + (1 - wins) * miss
        log_diagonal = jnp.log(jnp.diagonal(S, axis1=1, axis2=2))
        kl = 0.5 * (jnp.sum(S**2) + jnp.sum(m**2) - num_means) - jnp.sum(log_diagonal)
        return expected.sum() - kl

    value_and_grad = jax.jit(jax.value_and_grad(lambda t: -elbo(t)))
    solution = scipy.optimize.minimize(
        lambda t: tuple(np.asarray(v, float) for v in value_and_grad(jnp.asarray(t))),
        np.zeros(num_means + num_classes * len(tril[0])),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "maxfun": 40000, "gtol": 1e-10, "ftol": 1e-16},
    )
    return -float(solution.fun)
