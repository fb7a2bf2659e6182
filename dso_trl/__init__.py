"""dso_trl: Direct Steering Optimization (DSO) for removing social bias at inference time, on Hugging Face TRL."""

__version__ = "0.1.0"

from .steering import SparsifyReport, Steering, SteeringConfig, SteeringError  # noqa: E402

__all__ = ["SparsifyReport", "Steering", "SteeringConfig", "SteeringError", "__version__"]
