"""A custom likelihood: negative-binomial counts, written from `log_prob` alone.

Subclass `ngvi.likelihoods.AbstractLikelihood`, write the elementwise `log_prob(f, y)`;
expectations and derivatives come from Gauss-Hermite quadrature and autodiff. Adding
`conditional_moments` enables `GaussNewton` and predictive moments. Fitted to the yearly
coal-mining disaster counts and compared with the built-in Poisson likelihood.

    python examples/custom_likelihood.py
    python examples/custom_likelihood.py --quick
"""

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

import ngvi


class NegativeBinomial(ngvi.likelihoods.AbstractLikelihood):
    r"""$y \sim \mathrm{NB}(\text{mean } e^f, \text{dispersion } r)$:
    `log p = lgamma(y + r) - lgamma(r) - lgamma(y + 1) + r log(r / (r + e^f))
    + y log(e^f / (r + e^f))`."""

    dispersion: float = 5.0

    def log_prob(self, f, y):
        r = self.dispersion
        log_denominator = jnp.logaddexp(jnp.log(r), f)
        return (
            gammaln(y + r)
            - gammaln(r)
            - gammaln(y + 1.0)
            + r * (jnp.log(r) - log_denominator)
            + y * (f - log_denominator)
        )

    def conditional_moments(self, f):
        mean = jnp.exp(f)
        return mean, mean + mean**2 / self.dispersion


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    parser.add_argument("--dispersion", type=float, default=5.0)
    parser.add_argument("--out", default="out/custom", help="folder for the plot")
    args = parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)

    years, counts = ngvi.datasets.coal_mining()
    prior = ngvi.GPPrior(
        ngvi.kernels.Matern32(variance=1.0, lengthscale=10.0), mean=float(np.log(counts.mean()))
    )
    num_steps = 20 if args.quick else 50
    results, models = {}, {}
    for name, likelihood, strategy in [
        (
            "negative binomial, NaturalGradient",
            NegativeBinomial(dispersion=args.dispersion),
            ngvi.NaturalGradient(lr=1.0),
        ),
        (
            "negative binomial, GaussNewton",
            NegativeBinomial(dispersion=args.dispersion),
            ngvi.GaussNewton(lr=1.0),
        ),
        ("Poisson, NaturalGradient", ngvi.likelihoods.Poisson(), ngvi.NaturalGradient(lr=1.0)),
    ]:
        model = ngvi.Model(prior, likelihood, years, counts)
        result = ngvi.fit(model, strategy, num_steps=num_steps, progress=False)
        results[name], models[name] = result, model
        print(f"{name}: steps {result.num_steps}, ELBO {float(result.elbo):.6f}")

    name = "negative binomial, NaturalGradient"
    grid = np.linspace(years.min(), years.max(), 100 if args.quick else 300)
    pred = ngvi.predict(models[name], results[name].q, grid)
    print(f"predictive mean range: {float(pred.mean.min()):.4f} to {float(pred.mean.max()):.4f}")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(years, counts, width=1.0, color="0.8", label="disasters per year")
    sd = np.sqrt(np.asarray(pred.variance))
    ax.plot(grid, np.asarray(pred.mean), color="C0", label="predictive mean")
    ax.fill_between(
        grid,
        np.maximum(np.asarray(pred.mean) - sd, 0),
        np.asarray(pred.mean) + sd,
        color="C0",
        alpha=0.2,
        label="+- 1 predictive sd",
    )
    ax.set_xlabel("year")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "custom.png", dpi=100)
    plt.close(fig)
    print(f"plot: {out / 'custom.png'}")
    return results


if __name__ == "__main__":
    main()
