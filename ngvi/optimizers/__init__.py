"""Optimizer strategies: interchangeable `init`/`step`/`terminate` modules for `ngvi.fit`."""

from .adam import Adam as Adam
from .base import (
    AbstractOptimizer as AbstractOptimizer,
    StepInfo as StepInfo,
    StepSize as StepSize,
    step_size_at as step_size_at,
)
from .blr import BLR as BLR
from .gauss_newton import GaussNewton as GaussNewton
from .natural_gradient import (
    AbstractNaturalStep as AbstractNaturalStep,
    NaturalGradient as NaturalGradient,
)
