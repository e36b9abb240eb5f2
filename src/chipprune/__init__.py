"""chipprune: Channel Independence-based Pruning (CHIP, NeurIPS 2021) for PyTorch CNNs.

The data flow, one subpackage per step (docs/ARCHITECTURE.md): ``models`` (names, definitions,
what is known about each) -> ``data`` (images, calibration) -> ``scoring`` (feature maps to channel
scores) -> ``planning`` (channels per group) -> ``surgery`` (removing them) -> ``training``
(fine-tuning) -> ``evaluation`` (size, accuracy, latency) -> ``reporting`` / ``io``. ``pipeline``
runs the steps in order; ``pilot`` sweeps compression levels; ``cli`` is a thin layer over all this.
"""

from ._version import __version__
from .data.calibration import Calibration
from .errors import ChipPruneError
from .io.pruned import PruneResult, load_pruned, save_pruned
from .models.custom import custom_spec
from .models.registry import get_model_spec, list_models, load_model
from .models.spec import ModelSpec
from .pilot.any_model import SweepPoint, sweep_any, sweep_table
from .pipeline import plan, prune, prune_to_plan, score
from .planning.request import PlanRequest
from .scoring.criteria import CRITERIA
from .scoring.independence import channel_independence
from .scoring.placement import decompositions_on
from .training.any_model import finetune_module

__all__ = [
    "__version__",
    "CRITERIA",
    "Calibration",
    "ChipPruneError",
    "ModelSpec",
    "PlanRequest",
    "PruneResult",
    "SweepPoint",
    "channel_independence",
    "custom_spec",
    "decompositions_on",
    "finetune_module",
    "get_model_spec",
    "list_models",
    "load_model",
    "load_pruned",
    "plan",
    "prune",
    "prune_to_plan",
    "save_pruned",
    "score",
    "sweep_any",
    "sweep_table",
]
