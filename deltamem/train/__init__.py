"""Training δ-mem adapters with the backbone frozen: recipes, episode sources, the trainer."""

from .config import TrainConfig
from .trainer import Trainer, init_distributed

__all__ = ["TrainConfig", "Trainer", "init_distributed"]
