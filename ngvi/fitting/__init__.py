"""Fitting: the compiled loop, its outcomes and its result."""

from .em import fit_hyperparameters as fit_hyperparameters
from .em_result import (
    HyperparameterOutcome as HyperparameterOutcome,
    HyperparameterResult as HyperparameterResult,
)
from .fit import fit as fit
from .hyperpriors import SignalVariancePrior as SignalVariancePrior
from .outcome import FitOutcome as FitOutcome
from .result import FitResult as FitResult
