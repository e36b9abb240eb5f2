"""chipprune: Channel Independence-based Pruning (CHIP, NeurIPS 2021) for PyTorch CNNs."""

__version__ = "0.1.0"

from .errors import ChipPruneError  # noqa: E402
from .independence import channel_independence  # noqa: E402
from .models import create_model, get_model_spec, list_models  # noqa: E402
from .pipeline import Calibration, PruneResult, load_model, load_pruned, prune, save_pruned, score  # noqa: E402

__all__ = [
    "__version__",
    "ChipPruneError",
    "channel_independence",
    "create_model",
    "get_model_spec",
    "list_models",
    "Calibration",
    "PruneResult",
    "load_model",
    "load_pruned",
    "prune",
    "save_pruned",
    "score",
]
