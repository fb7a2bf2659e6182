"""DSO training on TRL: `DSOConfig` and `DSOTrainer`."""

from .config import DSOConfig
from .dso_trainer import DSOTrainer

__all__ = ["DSOConfig", "DSOTrainer"]
