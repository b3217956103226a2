"""Which posterior predicts sonar better: Gaussian VI, Laplace, or the exact one?

Run with `make bench-exact` (or `python benchmarks/bench_exact_posterior.py`). On the folds of
`bench_real_data.py` (5-fold stratified, seed 0, features standardised on the training part),
each method's hyperparameters are learned as there: scikit-learn's Laplace GPC on its
approximate marginal likelihood, ngvi's classifier on its ELBO (both `sigma^2 * SE(ARD)`, logit
likelihood). Then, *at each of the two hyperparameter settings*, three posteriors of the same
model predict the held-out fold:

- **Laplace**: scikit-learn's GPC with that kernel fixed (`optimizer=None`);
- **VI**: ngvi's classifier with that kernel fixed (`learn_hyperparameters=False`): the
  Gaussian maximising the ELBO, natural-gradient steps to convergence;
- **exact**: elliptical slice sampling (Murray, Adams & MacKay 2010) of `p(f | y)` at the
  training inputs (kernel plus ngvi's jitter 1e-6), two chains of `--iterations` steps from
  `f = 0`, the first quarter discarded, every 50th kept; the predictive probability is
  `E[sigma(f_*)]` over the Gaussian conditional `f_* | f` by 60-node Gauss-Hermite quadrature.
  Each chain's NLPD is reported, so their spread shows the Monte Carlo error.

NLPD as in `bench_real_data.py`. The table replaces the marked section of `docs/results.md`.
"""

import argparse
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import expit
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessClassifier as LaplaceGPC
from sklearn.gaussian_process.kernels import RBF, ConstantKernel
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sections import write_section  # noqa: E402
from bench_real_data import load, make_methods, nlpd  # noqa: E402

from ngvi.sklearn import GaussianProcessClassifier  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results.md"
START, END = "<!-- exact-posterior:start -->", "<!-- exact-posterior:end -->"
JITTER = 1e-6


def elliptical_slice_chain(factor: np.ndarray, signs: np.ndarray, key, iterations: int):
    """`iterations` elliptical slice sampling steps for `f ~ N(0, L L^T)`, likelihood
    `prod_i sigma(s_i f_i)`, started at `f = 0`; returns every state, `(iterations, n)`."""
    factor, signs = jnp.asarray(factor), jnp.asarray(signs)

    def log_likelihood(f):
        return jnp.sum(jax.nn.log_sigmoid(signs * f))

    def step(carry, key):
        f, current = carry
        k_prior, k_level, k_angle = jax.random.split(key, 3)
        nu = factor @ jax.random.normal(k_prior, f.shape, f.dtype)
        level = current + jnp.log(jax.random.uniform(k_level, dtype=f.dtype))
        angle = jax.random.uniform(k_angle, dtype=f.dtype, maxval=2 * jnp.pi)

        def proposal(a):
            return f * jnp.cos(a) + nu * jnp.sin(a)

        def shrink(state):  # shrink the bracket towards 0 and draw again
            a, low, high, _, key = state
            low, high = jnp.where(a < 0, a, low), jnp.where(a < 0, high, a)
            key, sub = jax.random.split(key)
            a = jax.random.uniform(sub, dtype=f.dtype, minval=low, maxval=high)
            return a, low, high, log_likelihood(proposal(a)), key

        start = (angle, angle - 2 * jnp.pi, angle, log_likelihood(proposal(angle)), k_angle)
        angle, _, _, value, _ = jax.lax.while_loop(lambda s: s[3] <= level, shrink, start)
        new = proposal(angle)
        return (new, value), new

    zero = jnp.zeros(factor.shape[0], factor.dtype)
    run = jax.jit(lambda keys: jax.lax.scan(step, (zero, log_likelihood(zero)), keys)[1])
    return np.asarray(run(jax.random.split(key, iterations)))


def exact_nlpd(kernel, A, y, B, y_test, key, iterations: int) -> list[float]:
    """NLPD of the sampled exact posterior predictive, one value per chain."""
    K = kernel(A) + JITTER * np.eye(len(A))
    factor = np.linalg.cholesky(K)
    cross = kernel(B, A)
    projected = np.linalg.solve(factor, cross.T)  # L^-1 K_xs, (n, m)
    variance = np.diag(kernel(B)) - np.sum(projected**2, axis=0)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    weights = weights / weights.sum()
    values = []
    for chain_key in jax.random.split(key, 2):
        states = elliptical_slice_chain(factor, 2.0 * y - 1.0, chain_key, iterations)
        kept = states[iterations // 4 :: 50]
        means = projected.T @ np.linalg.solve(factor, kept.T)  # K_sx K^-1 f, (m, S)
        latent = (
            means[None] + np.sqrt(np.maximum(variance, 0))[None, :, None] * nodes[:, None, None]
        )
        proba = np.mean(np.tensordot(weights, expit(latent), axes=1), axis=1)
        values.append(nlpd(proba, y_test))
    return values


def fold_rows(X, y, fold: int, train, test, iterations: int, seed: int) -> list[dict]:
    scaler = StandardScaler().fit(X[train])
    A, B = scaler.transform(X[train]), scaler.transform(X[test])
    methods = make_methods(X.shape[1], num_steps=200, lr=0.1, seed=seed)
    laplace, vi = methods["Laplace"].fit(A, y[train]), methods["ngvi"].fit(A, y[train])
    settings = {
        "Laplace's": (laplace.kernel_.k1.constant_value, laplace.kernel_.k2.length_scale),
        "ngvi's": (vi.variance_, vi.lengthscale_),
    }
    rows = []
    for source, (variance, lengthscale) in settings.items():
        kernel = ConstantKernel(variance, "fixed") * RBF(lengthscale, "fixed")
        at_laplace = LaplaceGPC(kernel=kernel, optimizer=None).fit(A, y[train])
        at_vi = GaussianProcessClassifier(
            likelihood="logit",
            variance=float(variance),
            lengthscale=np.asarray(lengthscale, float),
            learn_hyperparameters=False,
            standardize=False,
        ).fit(A, y[train])
        start = time.perf_counter()
        exact = exact_nlpd(kernel, A, y[train], B, y[test], jax.random.PRNGKey(fold), iterations)
        rows.append(
            {
                "fold": fold,
                "hyperparameters": source,
                "variance": float(variance),
                "Laplace": nlpd(at_laplace.predict_proba(B)[:, 1], y[test]),
                "VI": nlpd(at_vi.predict_proba(B)[:, 1], y[test]),
                "exact": exact,
                "sampling_s": time.perf_counter() - start,
            }
        )
        print(rows[-1], flush=True)
    return rows


def render(rows: list[dict], args) -> str:
    lines = [
        f"Generated by `benchmarks/bench_exact_posterior.py` on {time.strftime('%Y-%m-%d')} "
        f"({args.dataset}, {args.folds}-fold stratified CV, seed {args.seed}; exact: two "
        f"elliptical slice chains of {args.iterations:,} steps each). Held-out NLPD of three "
        "posteriors of the same model at the same hyperparameters; **bold** marks the "
        "approximation closer to the exact posterior's NLPD.",
        "",
        "| fold | hyperparameters (signal variance) | Laplace | VI (ngvi) | exact (two chains) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        exact = float(np.mean(row["exact"]))
        laplace, vi = row["Laplace"], row["VI"]
        closer = "VI" if abs(vi - exact) <= abs(laplace - exact) else "Laplace"
        cells = {
            "Laplace": f"**{laplace:.3f}**" if closer == "Laplace" else f"{laplace:.3f}",
            "VI": f"**{vi:.3f}**" if closer == "VI" else f"{vi:.3f}",
        }
        chains = " / ".join(f"{v:.3f}" for v in row["exact"])
        lines.append(
            f"| {row['fold']} | {row['hyperparameters']} ({row['variance']:.0f}) | "
            f"{cells['Laplace']} | {cells['VI']} | {chains} |"
        )
    for source in ("Laplace's", "ngvi's"):
        chosen = [r for r in rows if r["hyperparameters"] == source]
        means = [
            np.mean([r[k] if k != "exact" else np.mean(r[k]) for r in chosen])
            for k in ("Laplace", "VI", "exact")
        ]
        lines.append(f"| mean | {source} | {means[0]:.3f} | {means[1]:.3f} | {means[2]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sonar")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", True)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    X, y = load(args.dataset)
    splitter = StratifiedKFold(n_splits=args.folds, shuffle=True, random_state=args.seed)
    rows = []
    for fold, (train, test) in enumerate(splitter.split(X, y)):
        rows += fold_rows(X, y, fold, train, test, args.iterations, args.seed)
    section = render(rows, args)
    print(section)
    write_section(args.out, START, END, f"{START}\n{section}\n{END}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
