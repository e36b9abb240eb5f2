"""torchvision's classification, detection and segmentation models by name, built with random
weights and no backbone weights (nothing is downloaded; weights come from the user's file).

Declared here too: the paper's ResNet-50 string, and the layout of the paper's strings for every
torchvision ResNet-style model (ResNet, ResNeXt, Wide ResNet).
"""

from __future__ import annotations

import re
from functools import lru_cache, partial

import torch.nn as nn
import torchvision

from .spec import IMAGENET_MEAN, IMAGENET_STD, LayoutEntry, ModelSpec

__all__ = ["names", "spec_for", "resnet_paper_layout"]

_PAPER_SPARSITY = {"resnet50": "[0.]+[0.1]*3+[0.35]*16"}

# torchvision models that chipprune cannot prune, by name prefix, and why (bench/torchvision_sweep.py
# for ShuffleNetV2; the vision transformers as tried by hand: tracing vit_b_16 failed, and
# swin_t's tracing recursed until the kernel killed it at 23 GB after 329 s).
UNSUPPORTED = {
    "shufflenet_v2": "Torch-Pruning 1.6 cannot follow ShuffleNetV2's channel shuffle (a reshape that interleaves channels)",
    "vit_": "a vision transformer: CHIP scores convolutional feature maps, and Torch-Pruning 1.6 cannot trace its attention blocks here",
    "swin_": "a vision transformer: CHIP scores convolutional feature maps, and tracing Swin's shifted windows never ends",
    "maxvit_": "a vision transformer (MaxViT's attention blocks): CHIP scores convolutional feature maps",
}


@lru_cache(maxsize=1)
def _tasks() -> dict[str, str]:
    models = torchvision.models
    found = {name: "classification" for name in models.list_models(module=models)}
    found.update({name: "detection" for name in models.list_models(module=models.detection)})
    found.update({name: "segmentation" for name in models.list_models(module=models.segmentation)})
    return found


def names() -> tuple[str, ...]:
    """Every model name, classifiers first, then detectors and segmenters (each sorted)."""
    order = {"classification": 0, "detection": 1, "segmentation": 2}
    return tuple(sorted(_tasks(), key=lambda n: (order[_tasks()[n]], n)))


def _detection_size(name: str) -> int:
    # The size the detector resizes images to (its min_size): calibration crops are taken at it.
    return 300 if name.startswith("ssd300") else 320 if "320" in name else 800


def resnet_paper_layout(model: nn.Module) -> list[LayoutEntry]:
    """The entries of the paper's ResNet-50 strings (20): stem, the outputs of every stage but the
    last, then the inner convs of every block (conv1 and conv2 of a bottleneck)."""
    module_names = [n for n, _ in model.named_modules()]
    stages = sorted({n.split(".")[0] for n in module_names if re.fullmatch(r"layer\d+", n)})
    blocks = [n for n in module_names if re.fullmatch(r"layer\d+\.\d+", n)]
    last_conv = "conv3" if any(n.endswith(".conv3") for n in module_names) else "conv2"
    inner = ("conv1", "conv2") if last_conv == "conv3" else ("conv1",)
    entries = [LayoutEntry("stem (conv1 + max-pool)", ("conv1",))]
    entries += [LayoutEntry(f"{st} output (residual stream)", (f"{st}.0.{last_conv}",)) for st in stages[:-1]]
    entries += [LayoutEntry(f"{b} inner convs", tuple(f"{b}.{c}" for c in inner)) for b in blocks]
    return entries


def spec_for(name: str) -> ModelSpec:
    """The spec of torchvision's model ``name`` (one of ``names()``)."""
    task = _tasks()[name]
    with_backbone = partial(torchvision.models.get_model, name, weights=None, weights_backbone=None)
    if task == "detection":
        # Detectors take a list of images in [0, 1] and normalise and resize them themselves.
        return ModelSpec(
            name=name, factory=with_backbone, family="torchvision detection", image_size=_detection_size(name), num_classes=91, mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0), notes="torchvision detection (COCO's 91 classes)", task="detection", images_as_list=True,
        )
    if task == "segmentation":
        return ModelSpec(
            name=name, factory=with_backbone, family="torchvision segmentation", image_size=520, num_classes=21, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            notes="torchvision segmentation (VOC's 21 classes)", task="segmentation",
        )
    # GoogLeNet and Inception-v3 warn that their default initialisation will change; ask for
    # today's explicitly, so results do not shift under a torchvision upgrade.
    extra = {"init_weights": True} if name in ("googlenet", "inception_v3") else {}
    return ModelSpec(
        name=name,
        factory=partial(torchvision.models.get_model, name, weights=None, **extra),
        family="torchvision",
        # torchvision's classifiers are trained at 224 except Inception-v3 (299).
        image_size=299 if name == "inception_v3" else 224,
        num_classes=1000,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        notes="torchvision",
        paper_sparsity=_PAPER_SPARSITY.get(name),
        paper_layout=resnet_paper_layout if name.startswith(("resnet", "resnext", "wide_resnet")) else None,
        unsupported=next((why for prefix, why in UNSUPPORTED.items() if name.startswith(prefix)), None),
    )
