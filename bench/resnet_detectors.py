"""torchvision's ResNet-50 FPN detectors (too large for the sweep's 120 s and 4 GB at 800 px on one
thread) pruned at 0.3 with CHIP at a small internal size; Mask and Keypoint R-CNN's heads end in
transposed convs.

    python bench/resnet_detectors.py [--size 128] [--only NAME ...]

Random weights; the detectors' internal resize is set to ``--size``; one calibration image; the
R-CNNs' score threshold at 0, so that a mask or keypoint head runs on 100 detections before and
after. Prints the output layers kept, the MAC ratio and the seconds (trace, plan, score, prune,
BatchNorm re-estimation).
"""

from __future__ import annotations

import argparse
import time

import torch

import chipprune
from chipprune.surgery.groups import prunable_groups


NAMES = ("maskrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn_v2",
         "fcos_resnet50_fpn", "retinanet_resnet50_fpn_v2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--only", nargs="*", default=list(NAMES))
    args = parser.parse_args()
    print(f"{'model':28}{'MACs after':>12}{'seconds':>9}  output layers kept")
    for name in args.only:
        torch.manual_seed(0)
        model, spec = chipprune.load_model(name, None, image_size=args.size)
        model.transform.min_size, model.transform.max_size = (args.size,), args.size
        # Every image yields the most detections (100): the mask/keypoint head runs once per detection,
        # so with random weights the count (and the MACs) would otherwise change with the pruning.
        if hasattr(model, "roi_heads"):
            model.roi_heads.score_thresh = 0.0
        started = time.perf_counter()
        outputs = prunable_groups(model, spec)[2]
        result = chipprune.prune(model, spec, "0.3", calibration=[spec.model_input(torch.rand(1, 3, args.size, args.size))], progress=False)
        ratio = result.report.macs_after / result.report.macs_before
        print(f"{name:28}{ratio:>12.2f}{time.perf_counter() - started:>9.0f}  {', '.join(outputs)}")


if __name__ == "__main__":
    main()
