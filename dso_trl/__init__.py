"""dso_trl: Direct Steering Optimization (DSO) for removing social bias at inference time, on Hugging Face TRL."""

from .steering import SparsifyReport, Steering, SteeringConfig, SteeringError
from .version import __version__

__all__ = ["DSOConfig", "DSOTrainer", "SparsifyReport", "Steering", "SteeringConfig", "SteeringError", "__version__"]


def __getattr__(name: str):
    """Import the trainer (and with it TRL) only when it is asked for: steering alone stays light."""
    if name in ("DSOConfig", "DSOTrainer"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'dso_trl' has no attribute {name!r}")
