"""Surgery: the groups of coupled channels (Torch-Pruning's dependency graph) and their removal."""

from .apply import GroupRemoval, prune_group, remove_channels, select_top
from .groups import ChannelGroup, FeatureSource, build_graph, build_groups, classifier_outputs, find_classifier, prunable_groups

__all__ = [
    "ChannelGroup", "FeatureSource", "GroupRemoval", "build_graph", "build_groups", "classifier_outputs",
    "find_classifier", "prunable_groups", "prune_group", "remove_channels", "select_top",
]
