"""Fitting: the compiled loop, its outcomes and its result."""

from .fit import fit as fit
from .outcome import FitOutcome as FitOutcome
from .result import FitResult as FitResult
