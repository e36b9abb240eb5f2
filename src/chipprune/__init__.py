"""chipprune: Channel Independence-based Pruning (CHIP, NeurIPS 2021) for PyTorch CNNs.

The data flow, one subpackage per step (docs/ARCHITECTURE.md): ``models`` (names, definitions,
what is known about each) -> ``data`` (images, calibration) -> ``scoring`` (feature maps to channel
scores) -> ``planning`` (channels per group) -> ``surgery`` (removing them) -> ``training``
(fine-tuning) -> ``evaluation`` (size, accuracy, latency) -> ``reporting`` / ``io``. ``pipeline``
runs the steps in order; ``pilot`` sweeps compression levels; ``cli`` is a thin layer over all this.
"""

__version__ = "0.1.0"

from .data.calibration import Calibration  # noqa: E402
from .errors import ChipPruneError  # noqa: E402
from .io.pruned import PruneResult, load_pruned, save_pruned  # noqa: E402
from .models.registry import get_model_spec, list_models, load_model  # noqa: E402
from .pipeline import plan, prune, prune_to_plan, score  # noqa: E402
from .planning.request import PlanRequest  # noqa: E402
from .scoring.criteria import CRITERIA  # noqa: E402
from .scoring.independence import channel_independence  # noqa: E402

__all__ = [
    "__version__",
    "CRITERIA",
    "Calibration",
    "ChipPruneError",
    "PlanRequest",
    "PruneResult",
    "channel_independence",
    "get_model_spec",
    "list_models",
    "load_model",
    "load_pruned",
    "plan",
    "prune",
    "prune_to_plan",
    "save_pruned",
    "score",
]
