"""Scoring: channel independence (the math), streaming feature maps into per-group scores, and the
criteria (chip, hrank, l1, random) behind one interface."""

from .criteria import CRITERIA, Criterion, get_criterion
from .independence import channel_independence, channel_independence_per_image, channel_independence_reference
from .streaming import UNSTABLE_BELOW, GroupScores, score_groups, spearman

__all__ = [
    "CRITERIA", "Criterion", "get_criterion", "channel_independence", "channel_independence_per_image",
    "channel_independence_reference", "UNSTABLE_BELOW", "GroupScores", "score_groups", "spearman",
]
