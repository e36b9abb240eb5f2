"""Mask R-CNN and Keypoint R-CNN, whose heads end in transposed convs, pruned at 0.3 with CHIP.

    python bench/rcnn_heads.py [--size 128]

Random weights; the detectors' internal resize is set to ``--size`` (their 800 px does not fit this
sweep's memory on a small machine); one calibration image; the score threshold at 0, so that the
mask or keypoint head runs on 100 detections before and after. Prints the output layers kept, the MAC
ratio and the seconds (trace, plan, score, prune, BatchNorm re-estimation).
"""

from __future__ import annotations

import argparse
import time

import torch

import chipprune
from chipprune.surgery.groups import prunable_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    print(f"{'model':28}{'MACs after':>12}{'seconds':>9}  output layers kept")
    for name in ("maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn"):
        torch.manual_seed(0)
        model, spec = chipprune.load_model(name, None, image_size=args.size)
        model.transform.min_size, model.transform.max_size = (args.size,), args.size
        # Every image yields the most detections (100): the mask/keypoint head runs once per detection,
        # so with random weights the count (and the MACs) would otherwise change with the pruning.
        model.roi_heads.score_thresh = 0.0
        started = time.perf_counter()
        outputs = prunable_groups(model, spec)[2]
        result = chipprune.prune(model, spec, "0.3", calibration=[spec.model_input(torch.rand(1, 3, args.size, args.size))], progress=False)
        ratio = result.report.macs_after / result.report.macs_before
        print(f"{name:28}{ratio:>12.2f}{time.perf_counter() - started:>9.0f}  {', '.join(outputs)}")


if __name__ == "__main__":
    main()
