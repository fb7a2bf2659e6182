"""DSO steering: per-neuron affine maps on norm outputs, attachable to any Hugging Face model, with no trainer."""

from .config import SteeringConfig
from .core import SparsifyReport, Steering
from .targets import Site, SteeringError
from .vectors import validate_strength

__all__ = ["Site", "SparsifyReport", "Steering", "SteeringConfig", "SteeringError", "validate_strength"]
