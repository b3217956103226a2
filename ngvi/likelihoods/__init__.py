r"""Likelihoods $p(y \mid f)$: subclass `AbstractLikelihood` and write `log_prob`."""

from .base import AbstractLikelihood as AbstractLikelihood
from .binary import BernoulliLogit as BernoulliLogit, Probit as Probit
from .categorical import RobustMax as RobustMax, Softmax as Softmax
from .gaussian import Gaussian as Gaussian
from .heteroscedastic import HeteroscedasticGaussian as HeteroscedasticGaussian
from .multi import AbstractMultiLatentLikelihood as AbstractMultiLatentLikelihood
from .poisson import Poisson as Poisson
from .student_t import StudentT as StudentT
