"""Training: the paper's recipes, the loop (AMP, checkpoints, resume, torchrun), fine-tuning a pruned
folder and training from scratch."""

from .checkpoint import read_checkpoint
from .finetune import finetune, train_from_scratch
from .loop import TrainConfig, fit
from .recipes import RECIPES, Recipe, build_scheduler, recipe_with

__all__ = ["RECIPES", "Recipe", "TrainConfig", "build_scheduler", "finetune", "fit", "read_checkpoint", "recipe_with", "train_from_scratch"]
