"""PRISM: a Bittensor subnet for neural-architecture and training-recipe discovery."""

__version__ = "0.1.0"
