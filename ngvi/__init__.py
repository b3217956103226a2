"""ngvi: natural-gradient variational inference with Gaussian approximate posteriors."""

import importlib.metadata

from . import (
    _compilation_cache as _compilation_cache,  # JAX's persistent cache, opt-out (see module)
    _xla as _xla,  # sets XLA_FLAGS on import, before JAX's backend starts (see _xla.py)
    datasets as datasets,
    kernels as kernels,
    likelihoods as likelihoods,
)
from ._data import Data as Data
from .families import (
    AbstractVariational as AbstractVariational,
    CoupledSiteGaussianVariational as CoupledSiteGaussianVariational,
    DenseGaussianVariational as DenseGaussianVariational,
    DiagonalGaussianVariational as DiagonalGaussianVariational,
    Marginals as Marginals,
    SiteGaussianVariational as SiteGaussianVariational,
    SiteStatistics as SiteStatistics,
    WhitenedGaussianVariational as WhitenedGaussianVariational,
)
from .fitting import (
    FitOutcome as FitOutcome,
    FitResult as FitResult,
    HyperparameterOutcome as HyperparameterOutcome,
    HyperparameterResult as HyperparameterResult,
    SignalVariancePrior as SignalVariancePrior,
    fit as fit,
    fit_hyperparameters as fit_hyperparameters,
)
from .gaussian import (
    blr_diag_update as blr_diag_update,
    blr_full_update as blr_full_update,
    damped_natural_update as damped_natural_update,
    gauss_newton_precision as gauss_newton_precision,
    gaussian_entropy as gaussian_entropy,
    gaussian_kl as gaussian_kl,
    likelihood_site as likelihood_site,
    moments_to_natural as moments_to_natural,
    natural_to_moments as natural_to_moments,
    newton_update as newton_update,
    riemannian_psd_correction as riemannian_psd_correction,
    variational_elbo_gaussian as variational_elbo_gaussian,
    variational_elbo_mc as variational_elbo_mc,
)
from .hyperparameters import LearnHyperparameters as LearnHyperparameters
from .models import (
    AbstractModel as AbstractModel,
    Model as Model,
    ParametricModel as ParametricModel,
    SparseModel as SparseModel,
)
from .optimizers import (
    BLR as BLR,
    AbstractOptimizer as AbstractOptimizer,
    Adam as Adam,
    GaussNewton as GaussNewton,
    NaturalGradient as NaturalGradient,
    StepInfo as StepInfo,
)
from .parameters import learnable as learnable
from .predict import Prediction as Prediction, predict as predict
from .priors import (
    AbstractPrior as AbstractPrior,
    GaussianPrior as GaussianPrior,
    GPPrior as GPPrior,
)
from .serialisation import LoadError as LoadError, load as load, save as save
from .streaming import Stream as Stream

try:
    __version__ = importlib.metadata.version("ngvi")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"
