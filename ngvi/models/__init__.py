"""Models: the protocol and its implementations."""

from .base import AbstractModel as AbstractModel
from .dense import Model as Model
from .parametric import ParametricModel as ParametricModel
from .sparse import SparseModel as SparseModel
