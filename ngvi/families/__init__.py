"""Gaussian variational families: each holds only its own parameters; the model supplies the
prior through a view."""

from .base import (
    AbstractVariational as AbstractVariational,
    Marginals as Marginals,
    SiteStatistics as SiteStatistics,
)
from .coupled_sites import CoupledSiteGaussianVariational as CoupledSiteGaussianVariational
from .dense import DenseGaussianVariational as DenseGaussianVariational
from .diagonal import DiagonalGaussianVariational as DiagonalGaussianVariational
from .moments import WhitenedGaussianVariational as WhitenedGaussianVariational
from .sites import (
    SiteGaussianVariational as SiteGaussianVariational,
    SitePredictionView as SitePredictionView,
    SiteView as SiteView,
)
from .views import JointView as JointView, RowsView as RowsView
from .whitened_base import AbstractWhitenedVariational as AbstractWhitenedVariational
