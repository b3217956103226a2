r"""Likelihoods $p(y \mid f)$: subclass `AbstractLikelihood` and write `log_prob`."""

from .base import AbstractLikelihood as AbstractLikelihood
from .binary import BernoulliLogit as BernoulliLogit, Probit as Probit
from .gaussian import Gaussian as Gaussian
from .poisson import Poisson as Poisson
from .student_t import StudentT as StudentT
