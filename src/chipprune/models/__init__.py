"""Models: the registry of names, chipprune's CIFAR definitions, torchvision's, and users' own."""

from .cifar_resnet import CifarResNet, cifar_resnet
from .cifar_vgg import CifarVGG, cifar_vgg16_bn
from .custom import custom_spec
from .layers import LAYER_PRUNERS, PadShortcut
from .registry import get_model_spec, list_models, load_model
from .spec import LayoutEntry, ModelSpec

__all__ = [
    "CifarResNet",
    "PadShortcut",
    "LAYER_PRUNERS",
    "cifar_resnet",
    "CifarVGG",
    "cifar_vgg16_bn",
    "custom_spec",
    "LayoutEntry",
    "ModelSpec",
    "get_model_spec",
    "list_models",
    "load_model",
]
