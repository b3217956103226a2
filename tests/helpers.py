"""Shared problems with known answers."""

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
