"""Alias of :mod:`prism.evaluator.interface` for submissions that import the original path."""

from prism.evaluator.interface import *  # noqa: F403
from prism.evaluator.interface import __all__  # noqa: F401
