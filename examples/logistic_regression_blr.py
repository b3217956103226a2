"""Bayesian logistic regression with the Bayesian learning rule (BLR).

Weight-space model `f = X w` with a Gaussian prior on `w` and a logistic likelihood. Compares

- `NaturalGradient(lr=1)`: exact (quadrature) expectations, the variational optimum;
- `BLR` on the full-covariance model and on its mean-field twin
  (`ngvi.Model(..., family="mean-field")`: the model owns the family): Monte Carlo
  expectations with a decaying step size;
- `BLR(delta=True)`: Newton at the mean, i.e. the Laplace approximation.

Prints each one's ELBO and posterior mean of the weights; writes a convergence plot to `--out`.

    python examples/logistic_regression_blr.py
    python examples/logistic_regression_blr.py --quick
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import ngvi


def make_data(num_points: int, seed: int = 0):
    """Two informative features and a bias column; labels from a known weight vector."""
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((num_points, 2))
    design = np.column_stack([np.ones(num_points), features])
    true_w = np.array([-0.5, 2.0, -1.0])
    labels = (rng.uniform(size=num_points) < 1 / (1 + np.exp(-design @ true_w))).astype(float)
    return design, labels, true_w


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points and steps")
    parser.add_argument("--out", default="out/logistic", help="folder for the plot")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    design, labels, true_w = make_data(100 if args.quick else 500)
    # A diagonal prior covariance: mean field over the whitened weights is mean field over w.
    prior = ngvi.GaussianPrior(jnp.zeros(3), 4.0 * jnp.eye(3))
    likelihood = ngvi.likelihoods.BernoulliLogit()
    models = {
        "full": ngvi.Model(prior, likelihood, design, labels),
        "mean-field": ngvi.Model(prior, likelihood, design, labels, family="mean-field"),
    }
    steps = 60 if args.quick else 300
    schedule = optax.exponential_decay(0.5, transition_steps=steps // 6, decay_rate=0.5)
    strategies = {
        "NaturalGradient": ("full", ngvi.NaturalGradient(lr=1.0), 50),
        "BLR full": ("full", ngvi.BLR(lr=schedule, num_samples=32), steps),
        "BLR mean-field": ("mean-field", ngvi.BLR(lr=schedule, num_samples=32), steps),
        "BLR delta (Laplace)": ("full", ngvi.BLR(lr=1.0, delta=True), 50),
    }
    results = {}
    print(f"points: {len(labels)}, true weights: {true_w}")
    for name, (family, strategy, num_steps) in strategies.items():
        tol = 0.0 if "delta" not in name and name != "NaturalGradient" else 1e-9
        result = ngvi.fit(models[family], strategy, num_steps=num_steps, tol=tol, progress=False)
        results[name] = result
        mean, _ = result.posterior  # of the weights w, one row per latent function
        mean = np.asarray(mean[0])
        print(
            f"{name}: steps {result.num_steps}, ELBO {float(result.elbo):.6f}, "
            f"mean {np.array2string(mean, precision=4)}"
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    best = float(results["NaturalGradient"].elbo)
    for name, result in results.items():
        gap = np.abs(best - np.asarray(result.history.elbo)) + 1e-12
        ax.semilogy(np.arange(1, len(gap) + 1), gap, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("|ELBO* - ELBO|")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "logistic.png", dpi=100)
    plt.close(fig)
    print(f"plot: {out / 'logistic.png'}")
    return results


if __name__ == "__main__":
    main()
