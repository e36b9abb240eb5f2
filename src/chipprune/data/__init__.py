"""Data: where images come from (bundled sample, CIFAR-10 batches, ImageFolder), their transforms,
and the calibration images that score the channels."""

from .calibration import Calibration
from .sources import BUNDLED, DataSource, data_location, open_data
from .transforms import SeededAugmentation, make_loader, make_transform

__all__ = ["BUNDLED", "Calibration", "DataSource", "SeededAugmentation", "data_location", "make_loader", "make_transform", "open_data"]
