"""Optimizer strategies: interchangeable `init`/`step` modules for `ngvi.fit`."""

from .base import (
    AbstractOptimizer as AbstractOptimizer,
    StepInfo as StepInfo,
    StepSize as StepSize,
    step_size_at as step_size_at,
)
from .natural_gradient import NaturalGradient as NaturalGradient
