"""The model `ngvi fit` builds from a table, and the prediction columns `fit` and `predict`
write.

Features are standardised with the training split's mean and standard deviation (and a
Gaussian target too); `ngvi fit --save` stores those transforms with the model, so `ngvi
predict` applies the same ones to new rows.
"""

import numpy as np

from .data import UsageError

LIKELIHOODS = {
    "auto": None,
    "probit": "Probit",
    "logit": "BernoulliLogit",
    "poisson": "Poisson",
    "gaussian": "Gaussian",
    "softmax": "Softmax",
}
CLASSIFIERS = ("probit", "logit", "softmax")
DENSE_LIMIT = 5000
"""Training points above which the dense GP (an `N x N` kernel matrix, `O(N^3)` per step) is
refused in favour of the sparse model (`--inducing M`)."""


def resolve_likelihood(requested: str, y: np.ndarray, classes: list[str] | None) -> str:
    """`auto`: `softmax` for more than two text or integer labels, else `probit`."""
    distinct = np.unique(y)
    if requested == "auto":
        integers = bool(np.all(distinct == np.round(distinct)))
        several = distinct.size > 2 and (classes is not None or integers)
        return "softmax" if several else "probit"
    if classes is not None and requested not in CLASSIFIERS:
        raise UsageError(f"the target is text labels, which a {requested} likelihood cannot take.")
    return requested


def label_hint(kind: str, y: np.ndarray) -> str:
    """What to do about targets a binary classifier refused, in a parenthesis (or `""`)."""
    if kind not in ("probit", "logit"):
        return ""
    distinct = np.unique(y)
    if not np.all(distinct == np.round(distinct)):
        return " (for a real-valued target use --likelihood gaussian; for counts, poisson)"
    if distinct.size > 2:
        return " (for more than two classes use --likelihood softmax)"
    return " (write the two classes as 0/1, -1/+1 or text labels)"


def class_labels(y: np.ndarray, classes: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """`(indices 0..C-1, class names)` for a softmax target (numeric labels are sorted)."""
    if classes is not None:
        return y, classes
    values = np.unique(y)
    if not np.all(values == np.round(values)):
        raise UsageError("a softmax likelihood needs integer or text class labels.")
    return np.searchsorted(values, y).astype(float), [f"{v:g}" for v in values]


def likelihood(kind: str, num_classes: int = 2):
    import ngvi

    name = LIKELIHOODS[kind]
    component = getattr(ngvi.likelihoods, name, None)
    if component is None:
        raise UsageError(f"the likelihood {name!r} is not available in this version of ngvi.")
    if kind == "softmax":
        return component(num_classes=num_classes)
    if kind == "gaussian":
        return component(variance=0.1)
    if kind == "poisson":  # non-negative real targets too, as scikit-learn's PoissonRegressor
        return component(integer_counts=False)
    return component()


def build(args, kind: str, X_train: np.ndarray, y_train: np.ndarray, num_classes: int):
    """`(model, y_shift, y_scale)` on standardised inputs, dense or sparse (`--inducing`)."""
    import jax.numpy as jnp

    import ngvi

    n = len(y_train)
    if args.inducing is None and n > DENSE_LIMIT:
        gigabytes = 8 * n * n / 1e9
        raise UsageError(
            f"{n} training points are too many for the dense GP (its {n} x {n} kernel matrix "
            f"needs {gigabytes:.1f} GB and O(N^3) time per step): use the sparse model with "
            "--inducing M, e.g. --inducing 256 --batch-size 1024."
        )
    if args.inducing is not None and not 1 <= args.inducing <= n:
        raise UsageError(f"--inducing must be between 1 and {n} (the training points).")
    if args.batch_size is not None:
        if args.inducing is None:
            raise UsageError("--batch-size needs the sparse model: add --inducing M.")
        if not 1 <= args.batch_size <= n:
            raise UsageError(f"--batch-size must be between 1 and {n} (the training points).")
    kernel = ngvi.kernels.SquaredExponential(variance=1.0, lengthscale=jnp.ones(X_train.shape[1]))
    y_shift, y_scale, prior_mean = 0.0, 1.0, 0.0
    if kind == "gaussian":
        y_shift, y_scale = float(np.mean(y_train)), float(np.std(y_train)) or 1.0
    elif kind == "poisson":
        prior_mean = float(np.log(np.mean(y_train) + 0.5))
    prior = ngvi.GPPrior(kernel, mean=prior_mean, jitter=1e-6)
    y = (y_train - y_shift) / y_scale
    if args.inducing is None:
        model = ngvi.Model(prior, likelihood(kind, num_classes), X_train, y)
    else:
        model = ngvi.SparseModel(
            prior, likelihood(kind, num_classes), X_train, y, inducing=args.inducing, seed=args.seed
        )
    return model, y_shift, y_scale


def columns(result, meta: dict, X: np.ndarray) -> dict[str, np.ndarray]:
    """The prediction columns at raw inputs `X`: `p_<class>` and `predicted` for several
    classes; otherwise the predictive and latent mean and variance on the target's scale, and
    for two classes `predicted` (the label whose probability is at least 1/2)."""
    import ngvi

    standardised = (X - np.asarray(meta["centre"])) / np.asarray(meta["spread"])
    prediction = ngvi.predict(result.model, result.q, standardised)
    if meta["likelihood"] == "softmax":
        probabilities = np.asarray(prediction.mean)
        out = {f"p_{name}": probabilities[:, k] for k, name in enumerate(meta["classes"])}
        out["predicted"] = np.asarray(meta["classes"])[np.argmax(probabilities, axis=1)]
        return out
    shift, scale = meta["y_shift"], meta["y_scale"]
    out = {
        "predictive_mean": np.asarray(prediction.mean) * scale + shift,
        "predictive_variance": np.asarray(prediction.variance) * scale**2,
        "latent_mean": np.asarray(prediction.latent_mean) * scale + shift,
        "latent_variance": np.asarray(prediction.latent_variance) * scale**2,
    }
    if meta.get("binary_labels"):  # absent from files saved before it existed
        positive = (out["predictive_mean"] >= 0.5).astype(int)
        out["predicted"] = np.asarray(meta["binary_labels"])[positive]
    return out


def binary_labels(kind: str, y: np.ndarray, classes: list[str] | None) -> list[str] | None:
    """A binary classifier's two labels as the user wrote them, `[negative, positive]`: the
    probability column `predictive_mean` is that of the second (`None` for other models)."""
    if kind not in ("probit", "logit"):
        return None
    if classes is not None:
        return list(classes)
    return ["-1", "1"] if np.any(y < 0) else ["0", "1"]
