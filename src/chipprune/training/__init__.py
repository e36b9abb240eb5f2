"""Training: the paper's recipes, the loop (AMP, checkpoints, resume, torchrun), fine-tuning a pruned
folder and training from scratch."""

from .any_model import finetune_module
from .checkpoint import read_checkpoint
from .finetune import finetune, train_from_scratch
from .loop import TrainConfig, fit
from .recipes import RECIPES, Recipe, build_scheduler, recipe_with

__all__ = ["RECIPES", "Recipe", "TrainConfig", "build_scheduler", "finetune", "finetune_module", "fit", "read_checkpoint", "recipe_with", "train_from_scratch"]
