"""DSO steering: per-neuron affine maps on norm outputs, attachable to any Hugging Face model, with no trainer."""

from .config import SteeringConfig
from .core import SparsifyReport, Steering, validate_strength
from .targets import Site, SteeringError

__all__ = ["Site", "SparsifyReport", "Steering", "SteeringConfig", "SteeringError", "validate_strength"]
