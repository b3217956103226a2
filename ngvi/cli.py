"""`ngvi fit`: fit a GP to a CSV file from the command line and report held-out metrics.

    ngvi fit data.csv --target label --likelihood probit --out results/
    python -m ngvi fit            # the bundled 400-point banana classification set

The CSV has a header row; the features are every other numeric column (text columns are
skipped). Features are standardised with the training split's mean and standard deviation, a
held-out test split is kept aside, and the model is a GP with an ARD squared-exponential kernel
whose hyperparameters are learned (`LearnHyperparameters`) while the posterior is fitted by the
chosen strategy. Results: metrics on stdout and in `metrics.json`, `predictions.csv` (every
row, with its split, the predictive and the latent mean and variance) and `plot.png` in `--out`.
"""

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

OPTIMIZERS = {
    "natgrad": "NaturalGradient",
    "adam": "Adam",
    "blr": "BLR",
    "gauss-newton": "GaussNewton",
}
LIKELIHOODS = {
    "probit": "Probit",
    "logit": "BernoulliLogit",
    "poisson": "Poisson",
    "gaussian": "Gaussian",
}


class UsageError(ValueError):
    """Bad input from the user: reported as one line on stderr with exit code 2."""


def add_fit_parser(commands) -> None:
    """Register the `fit` subcommand on an `argparse` subparsers object."""
    parser = commands.add_parser(
        "fit",
        help="fit a GP to a CSV file (default: the bundled banana data) and report metrics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("csv", nargs="?", help="CSV file with a header row (default: banana)")
    parser.add_argument("--target", help="name of the target column (default: the last column)")
    parser.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default="probit")
    parser.add_argument(
        "--optimizer",
        choices=list(OPTIMIZERS),
        default="natgrad",
        help="strategy for the posterior (default: natgrad)",
    )
    parser.add_argument("--steps", type=int, default=300, help="fit steps (default: 300)")
    parser.add_argument(
        "--lr", type=float, default=None, help="step size of the strategy (default: its own)"
    )
    parser.add_argument(
        "--hyper-lr",
        type=float,
        default=0.05,
        help="Adam learning rate for the hyperparameters (default: 0.05)",
    )
    parser.add_argument(
        "--no-learn", action="store_true", help="keep the kernel and noise at their initial values"
    )
    parser.add_argument(
        "--test-fraction", type=float, default=0.2, help="held-out share (default: 0.2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and of the fit")
    parser.add_argument("--out", default="ngvi-fit-output", help="folder for predictions and plot")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=run_fit)


# ---------------------------------------------------------------------------------------------
# Reading and splitting data


def read_csv(path: str, target: str | None) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """`(X, y, feature_names, target_name)` from a CSV with a header row."""
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
    except OSError as error:
        raise UsageError(f"cannot read {path!r}: {error.strerror or error}") from None
    if len(rows) < 2:
        raise UsageError(f"{path!r} needs a header row and at least one data row.")
    header, body = [name.strip() for name in rows[0]], rows[1:]
    for number, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise UsageError(
                f"{path!r} line {number} has {len(row)} fields but the header has {len(header)}."
            )
    target = header[-1] if target is None else target
    if target not in header:
        raise UsageError(f"no column {target!r} in {path!r}; the columns are {', '.join(header)}.")
    columns = {name: [row[j].strip() for row in body] for j, name in enumerate(header)}
    y = _numeric_column(columns[target], target, strict=True)
    features, names = [], []
    for name in header:
        if name == target:
            continue
        values = _numeric_column(columns[name], name, strict=False)
        if values is not None:
            features.append(values)
            names.append(name)
    if not features:
        raise UsageError(f"{path!r} has no numeric feature columns besides {target!r}.")
    return np.stack(features, axis=1), y, names, target


def _numeric_column(values: list[str], name: str, strict: bool) -> np.ndarray | None:
    """Parse a column; `None` for a text column (no numbers at all) unless `strict`."""
    parsed, bad = [], None
    for row, value in enumerate(values):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
            bad = (row, value) if bad is None else bad
        else:
            if not math.isfinite(number):
                bad = (row, value) if bad is None else bad
        parsed.append(number)
    if bad is None:
        return np.asarray(parsed)
    if not strict and all(math.isnan(number) for number in parsed):
        return None  # a text column: not a feature
    row, value = bad
    raise UsageError(
        f"column {name!r} has a non-numeric or non-finite value {value!r} in data row {row + 1}."
    )


def split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random train/test indices; at least one point on each side."""
    if not 0.0 < test_fraction < 1.0:
        raise UsageError(f"--test-fraction must be in (0, 1), got {test_fraction}.")
    if n < 2:
        raise UsageError(f"need at least 2 rows to hold out a test split, got {n}.")
    order = np.random.default_rng(seed).permutation(n)
    num_test = min(max(1, round(test_fraction * n)), n - 1)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


# ---------------------------------------------------------------------------------------------
# Fitting and metrics


def _component(name: str, kind: str):
    import ngvi

    component = getattr(ngvi, name, None) or getattr(ngvi.likelihoods, name, None)
    if component is None:
        raise UsageError(f"the {kind} {name!r} is not available in this version of ngvi.")
    return component


def _optimizer(args):
    cls = _component(OPTIMIZERS[args.optimizer], "optimizer")
    return cls() if args.lr is None else cls(lr=args.lr)


def _build(args, X_train, y_train):
    """The model (on standardised inputs) and the target transform for a likelihood."""
    import jax.numpy as jnp

    import ngvi

    likelihood = _component(LIKELIHOODS[args.likelihood], "likelihood")()
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=jnp.ones(X_train.shape[1]))
    y_shift, y_scale, prior_mean = 0.0, 1.0, 0.0
    if args.likelihood == "gaussian":
        y_shift, y_scale = float(np.mean(y_train)), float(np.std(y_train)) or 1.0
        likelihood = ngvi.likelihoods.Gaussian(variance=0.1)
    elif args.likelihood == "poisson":
        prior_mean = float(np.log(np.mean(y_train) + 0.5))
    prior = ngvi.GPPrior(kernel, mean=prior_mean, jitter=1e-6)
    model = ngvi.Model(prior, likelihood, X_train, (y_train - y_shift) / y_scale)
    return model, y_shift, y_scale


def _poisson_log_predictive(y, mean, variance, num_points=40):
    """`log int Poisson(y | exp f) N(f | m, v) df` by Gauss-Hermite quadrature (probabilists')."""
    from scipy.special import gammaln, logsumexp

    nodes, weights = np.polynomial.hermite_e.hermegauss(num_points)
    f = mean[:, None] + np.sqrt(variance)[:, None] * nodes[None, :]
    log_p = y[:, None] * f - np.exp(f) - gammaln(y + 1.0)[:, None]
    return logsumexp(log_p + np.log(weights / weights.sum())[None, :], axis=1)


def metrics(likelihood: str, y, mean, variance) -> dict[str, float]:
    """Held-out metrics from predictive means/variances of `y*` (probabilities for classes)."""
    if likelihood in ("probit", "logit"):
        p = np.clip(mean, 1e-12, 1.0 - 1e-12)
        log_p = np.where(y > 0.5, np.log(p), np.log1p(-p))
        return {
            "accuracy": float(np.mean((mean > 0.5) == (y > 0.5))),
            "nlpd": float(-np.mean(log_p)),
        }
    if likelihood == "gaussian":
        nlpd = 0.5 * (np.log(2 * np.pi * variance) + (y - mean) ** 2 / variance)
        return {"rmse": float(np.sqrt(np.mean((y - mean) ** 2))), "nlpd": float(np.mean(nlpd))}
    raise AssertionError(likelihood)


def run_fit(args: argparse.Namespace) -> int:
    """The `fit` subcommand; returns the exit code (2 for bad input, 1 if the fit failed)."""
    import jax

    with jax.enable_x64(True):
        try:
            problem = _prepare(args)
        except ValueError as error:  # UsageError, and ngvi's own input checks
            message = " ".join(str(error).split())
            print(f"ngvi fit: error: {message}", file=sys.stderr)
            return 2
        return _fit_and_report(args, problem)


def _prepare(args) -> dict:
    """Everything user input can break, checked before anything is compiled."""
    import ngvi

    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}.")
    if not args.hyper_lr > 0:
        raise UsageError(f"--hyper-lr must be positive, got {args.hyper_lr}.")
    if args.csv is None:
        X, y = ngvi.datasets.banana()
        names, target, source = ["x1", "x2"], args.target or "y", "bundled banana data"
    else:
        X, y, names, target = read_csv(args.csv, args.target)
        source = args.csv
    train, test = split(len(y), args.test_fraction, args.seed)
    centre, spread = X[train].mean(axis=0), X[train].std(axis=0)
    spread = np.where(spread > 0, spread, 1.0)
    likelihood = _component(LIKELIHOODS[args.likelihood], "likelihood")()
    try:
        labels = np.asarray(likelihood.prepare_targets(y), dtype=float)
    except ValueError as error:
        raise UsageError(f"target column {target!r}: {error}") from None
    model, y_shift, y_scale = _build(args, (X[train] - centre) / spread, labels[train])
    return {
        "X": X,
        "labels": labels,
        "names": names,
        "target": target,
        "source": source,
        "train": train,
        "test": test,
        "centre": centre,
        "spread": spread,
        "model": model,
        "y_shift": y_shift,
        "y_scale": y_scale,
        "optimizer": _optimizer(args),
    }


def _fit_and_report(args, p: dict) -> int:
    import jax
    import optax

    import ngvi

    X, labels, train, test = p["X"], p["labels"], p["train"], p["test"]
    learn = None if args.no_learn else ngvi.LearnHyperparameters(optax.adam(args.hyper_lr))
    print(
        f"ngvi fit: {p['source']}: {len(train)} train / {len(test)} test points, {X.shape[1]} "
        f"features, target {p['target']!r}, {args.likelihood} likelihood, {args.optimizer}"
        + ("" if learn is None else " + learned hyperparameters")
    )
    result = ngvi.fit(
        p["model"],
        p["optimizer"],
        args.steps,
        key=jax.random.PRNGKey(args.seed),
        learn=learn,
        progress=not args.quiet,
        throw=False,
    )

    def predict(inputs):
        standardised = (inputs - p["centre"]) / p["spread"]
        prediction = ngvi.predict(result.model, result.q, standardised)
        mean = np.asarray(prediction.mean) * p["y_scale"] + p["y_shift"]
        variance = np.asarray(prediction.variance) * p["y_scale"] ** 2
        latent = (
            np.asarray(prediction.latent_mean) * p["y_scale"] + p["y_shift"],
            np.asarray(prediction.latent_variance) * p["y_scale"] ** 2,
        )
        return mean, variance, latent

    mean, variance, (latent_mean, latent_variance) = predict(X)
    if args.likelihood == "poisson":
        log_pred = _poisson_log_predictive(labels[test], latent_mean[test], latent_variance[test])
        scores = {
            "nlpd": float(-np.mean(log_pred)),
            "rate_rmse": float(np.sqrt(np.mean((mean[test] - labels[test]) ** 2))),
        }
    else:
        scores = metrics(args.likelihood, labels[test], mean[test], variance[test])
    _report(result, p["names"], scores)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.csv"
    columns = {
        "predictive_mean": mean,
        "predictive_variance": variance,
        "latent_mean": latent_mean,
        "latent_variance": latent_variance,
    }
    _write_predictions(path, X, labels, p["names"], p["target"], test, columns)
    print(f"  wrote {path}")
    summary = {
        "likelihood": args.likelihood,
        "optimizer": args.optimizer,
        "num_steps": result.num_steps,
        "outcome": result.message,
        "elbo": float(result.elbo),
        "num_train": int(len(train)),
        "num_test": int(len(test)),
        "test_metrics": scores,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_plot:
        from .cli_plot import plot

        path = plot(
            out / "plot.png",
            args.likelihood,
            X,
            labels,
            mean,
            variance,
            test,
            p["names"],
            lambda inputs: predict(inputs)[0],
        )
        print(f"  wrote {path}")
    if result.outcome == ngvi.FitOutcome.failed:
        print(f"ngvi fit: warning: {result.message}", file=sys.stderr)
        return 1
    return 0


def _report(result, names, scores) -> None:
    model = result.model
    print(f"  {result.num_steps} steps, {result.message}; final ELBO {float(result.elbo):.6g}")
    kernel = getattr(model.prior, "kernel", None)
    if kernel is not None:
        scales = np.atleast_1d(np.asarray(kernel.lengthscale))
        pairs = ", ".join(
            f"{n}={s:.3g}" for n, s in zip(names, np.broadcast_to(scales, len(names)), strict=True)
        )
        print(
            f"  kernel variance {float(kernel.variance):.4g}; lengthscales (standardised) {pairs}"
        )
    if hasattr(model.likelihood, "variance"):
        print(f"  noise variance (standardised target) {float(model.likelihood.variance):.4g}")
    print("  held-out: " + ", ".join(f"{name} {value:.4f}" for name, value in scores.items()))


def _write_predictions(path, X, labels, names, target, test, columns: dict) -> None:
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, target, "split", *columns])
        for i in range(len(labels)):
            values = [*X[i], labels[i]]
            extra = [f"{column[i]:.12g}" for column in columns.values()]
            split_name = "test" if is_test[i] else "train"
            writer.writerow([*(f"{v:.12g}" for v in values), split_name, *extra])
