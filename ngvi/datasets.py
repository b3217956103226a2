"""Small data sets bundled with ngvi (provenance in `ngvi/data/README.md`)."""

import gzip
from importlib.resources import files

import jax
import jax.numpy as jnp
import numpy as np


def _path(name: str):
    return files("ngvi") / "data" / name


def banana() -> tuple[np.ndarray, np.ndarray]:
    """The 400-point 2-D "banana" classification set: inputs `(400, 2)`, labels in {0, 1}."""
    X = np.loadtxt(_path("banana_X_train.txt"), delimiter=",")
    y = np.loadtxt(_path("banana_Y_train.txt"))
    return X, y


def banana_large() -> tuple[np.ndarray, np.ndarray]:
    """The 5,300-point 2-D "banana" set: inputs `(5300, 2)`, labels in {0, 1}."""
    with gzip.open(_path("banana_large.csv.gz"), "rt") as handle:
        data = np.loadtxt(handle, delimiter=",", skiprows=1)
    return data[:, :2], (data[:, 2] > 0).astype(float)


def skin() -> tuple[np.ndarray, np.ndarray]:
    """UCI Skin Segmentation: 245,057 pixels, inputs `(B, G, R)` in 0..255 `(245057, 3)`,
    labels 1 for skin and 0 for not skin (the file's 1 and 2)."""
    with gzip.open(_path("skin.tsv.gz"), "rt") as handle:
        data = np.loadtxt(handle, delimiter="\t")
    return data[:, :3], (data[:, 3] == 1).astype(float)


def letter() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """UCI Letter Recognition: 20,000 images as 16 integer features `(20000, 16)`, integer
    labels 0..25 and the letters they stand for."""
    with gzip.open(_path("letter.csv.gz"), "rt") as handle:
        lines = handle.read().splitlines()[1:]
    letters = [line.split(",", 1)[0] for line in lines]
    X = np.array([[float(v) for v in line.split(",")[1:]] for line in lines])
    names = sorted(set(letters))
    return X, np.array([names.index(letter) for letter in letters], dtype=float), names


def coal_mining(bin_width: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """British coal-mining disasters 1851-1962 binned into counts.

    Returns bin centres (years) and the number of disasters in each bin of `bin_width` years.
    """
    dates = np.loadtxt(_path("coal.txt"))
    edges = np.arange(np.floor(dates.min()), np.ceil(dates.max()) + bin_width, bin_width)
    counts, edges = np.histogram(dates, bins=edges)
    return 0.5 * (edges[:-1] + edges[1:]), counts.astype(float)


def tutorial(seed: int = 42, num_points: int = 30) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The 1-D classification problem of the public tutorial ngvi grew out of.

    `X = sort(U(-3, 3))` from the first half of `split(PRNGKey(seed))`; labels `+1` where
    `X > 0.3` else `-1`, with 10% flipped by a Bernoulli draw on the second half (4 of the 30
    labels for the default seed). The draws are made in float64 whatever the precision mode,
    so the data are the same with and without `jax_enable_x64`; they are returned in the
    default float dtype.
    """
    with jax.enable_x64(True):
        key_x, key_flip = jax.random.split(jax.random.PRNGKey(seed))
        X = jnp.sort(jax.random.uniform(key_x, (num_points,), minval=-3.0, maxval=3.0))
        y = jnp.where(X > 0.3, 1.0, -1.0)
        flip = jax.random.bernoulli(key_flip, 0.1, (num_points,))
        X, y = np.asarray(X), np.asarray(jnp.where(flip, -y, y))
    dtype = jnp.zeros(()).dtype
    return jnp.asarray(X, dtype), jnp.asarray(y, dtype)
