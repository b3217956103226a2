"""Priors: a GP prior over function values and a Gaussian prior over weights."""

from .base import AbstractPrior as AbstractPrior
from .gaussian import GaussianPrior as GaussianPrior
from .gp import GPPrior as GPPrior
