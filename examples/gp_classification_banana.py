"""GP classification of the 2-D "banana" data set with natural-gradient VI.

A GP prior with a squared-exponential kernel, a probit likelihood, and
`NaturalGradient(lr=1)`, which converges in a handful of steps. Prints the ELBO, the number of
steps and the training accuracy; writes a plot of the predictive probability to `--out`.

    python examples/gp_classification_banana.py            # all 400 points
    python examples/gp_classification_banana.py --quick    # 100 points, small grid
"""

import argparse
from pathlib import Path

import jax
import numpy as np

import ngvi


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="subsample for a fast run")
    parser.add_argument("--out", default="out/banana", help="folder for the plot")
    parser.add_argument("--num-steps", type=int, default=50)
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    X, y = ngvi.datasets.banana()
    if args.quick:
        keep = np.random.default_rng(0).choice(len(y), size=100, replace=False)
        X, y = X[keep], y[keep]
    kernel = ngvi.kernels.SquaredExponential(variance=2.0, lengthscale=0.6)
    model = ngvi.Model(ngvi.GPPrior(kernel, jitter=1e-6), ngvi.likelihoods.Probit(), X, y)
    result = ngvi.fit(model, ngvi.NaturalGradient(lr=1.0), num_steps=args.num_steps, progress=False)
    train = ngvi.predict(model, result.q, X)
    accuracy = float(np.mean((np.asarray(train.mean) > 0.5) == (y > 0.5)))

    print(f"points: {len(y)}")
    print(f"steps: {result.num_steps} ({result.message})")
    print(f"ELBO: {float(result.elbo):.6f}")
    print(f"training accuracy: {accuracy:.4f}")

    size = 30 if args.quick else 80
    g0, g1 = np.meshgrid(
        np.linspace(X[:, 0].min() - 0.5, X[:, 0].max() + 0.5, size),
        np.linspace(X[:, 1].min() - 0.5, X[:, 1].max() + 0.5, size),
    )
    grid = ngvi.predict(model, result.q, np.column_stack([g0.ravel(), g1.ravel()]))
    probability = np.asarray(grid.mean).reshape(g0.shape)
    print(f"grid probability range: {probability.min():.4f} to {probability.max():.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    contour = ax.contourf(g0, g1, probability, levels=np.linspace(0, 1, 11), cmap="RdBu_r")
    ax.contour(g0, g1, probability, levels=[0.5], colors="k")
    ax.scatter(X[:, 0], X[:, 1], c=y, cmap="RdBu_r", edgecolors="w", linewidths=0.4, s=16)
    fig.colorbar(contour, label="P(y = 1 | x)")
    ax.set_title(f"banana: NaturalGradient, ELBO {float(result.elbo):.2f}")
    fig.tight_layout()
    fig.savefig(out / "banana.png", dpi=100)
    plt.close(fig)
    print(f"plot: {out / 'banana.png'}")
    return {"result": result, "accuracy": accuracy}


if __name__ == "__main__":
    main()
