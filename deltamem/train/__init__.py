"""Training δ-mem adapters with the backbone frozen: recipes in sections, chains of stages, loss terms
as objects, the trainer."""

from .chain import train_chain
from .config import RecipeError, TrainConfig
from .objectives import AnswerCE, Distill, GateReg, Objective, Preserve
from .recipes import load_chain, load_recipe
from .trainer import Trainer, init_distributed

__all__ = ["AnswerCE", "Distill", "GateReg", "Objective", "Preserve", "RecipeError", "TrainConfig", "Trainer",
           "init_distributed", "load_chain", "load_recipe", "train_chain"]
