"""TRL reward callables for DSO: the paper's gender-parity reward and a capability-preserving accuracy reward.

Both read the dataset columns of docs/SCHEMA.md and work unchanged in a plain `trl.GRPOTrainer`.
"""

from .accuracy import UnambiguousAccuracyReward
from .parity import GenderParityReward

__all__ = ["GenderParityReward", "UnambiguousAccuracyReward"]
