"""Poisson regression of the British coal-mining disasters (1851-1962), binned by year.

A GP prior on the log rate, a Poisson likelihood (log link, closed-form expectations) and
`NaturalGradient(lr=1)`. Optionally learns the kernel hyperparameters by maximising the ELBO
(`--learn`). Prints the ELBO and the posterior rate at a few years; writes a plot to `--out`.

    python examples/coal_mining_poisson.py
    python examples/coal_mining_poisson.py --quick
"""

import argparse
from pathlib import Path

import jax
import numpy as np
import optax

import ngvi


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, no learning")
    parser.add_argument("--learn", action="store_true", help="learn kernel hyperparameters")
    parser.add_argument("--out", default="out/coal", help="folder for the plot")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    years, counts = ngvi.datasets.coal_mining()
    kernel = ngvi.kernels.Matern52(variance=1.0, lengthscale=15.0)
    prior = ngvi.GPPrior(kernel, mean=float(np.log(counts.mean())), jitter=1e-6)
    model = ngvi.Model(prior, ngvi.likelihoods.Poisson(), years, counts)
    strategy = ngvi.NaturalGradient(lr=1.0)
    if args.learn and not args.quick:
        learn = ngvi.LearnHyperparameters(optax.adam(2e-2), where=lambda m: m.prior.kernel)
        result = ngvi.fit(model, strategy, num_steps=400, learn=learn, progress=False)
        model = result.model
        print(f"learned lengthscale: {float(model.prior.kernel.lengthscale):.4f}")
        print(f"learned variance: {float(model.prior.kernel.variance):.4f}")
    else:
        result = ngvi.fit(model, strategy, num_steps=20 if args.quick else 50, progress=False)

    print(f"bins: {len(counts)}, disasters: {int(counts.sum())}")
    print(f"steps: {result.num_steps} ({result.message})")
    print(f"ELBO: {float(result.elbo):.6f}")
    grid = np.linspace(years.min(), years.max(), 100 if args.quick else 400)
    pred = ngvi.predict(model, result.q, grid)
    for year in (1860.5, 1890.5, 1950.5):
        at = ngvi.predict(model, result.q, np.array([year]))
        print(f"expected disasters in {int(year)}: {float(at.mean[0]):.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, sd = np.asarray(pred.latent_mean), np.sqrt(np.asarray(pred.latent_variance))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(years, counts, width=1.0, color="0.8", label="disasters per year")
    ax.plot(grid, np.exp(mean), color="C0", label="exp(E[f])")
    ax.fill_between(
        grid,
        np.exp(mean - 2 * sd),
        np.exp(mean + 2 * sd),
        color="C0",
        alpha=0.2,
        label="exp(E[f] +- 2 sd)",
    )
    ax.set_xlabel("year")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "coal.png", dpi=100)
    plt.close(fig)
    print(f"plot: {out / 'coal.png'}")
    return {"result": result}


if __name__ == "__main__":
    main()
