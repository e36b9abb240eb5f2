"""Model registry and the CIFAR model definitions."""

from .cifar_resnet import CifarResNet, PadShortcut, cifar_resnet
from .cifar_vgg import CifarVGG, cifar_vgg16_bn
from .registry import ModelSpec, create_model, get_model_spec, list_models

__all__ = [
    "CifarResNet",
    "PadShortcut",
    "cifar_resnet",
    "CifarVGG",
    "cifar_vgg16_bn",
    "ModelSpec",
    "create_model",
    "get_model_spec",
    "list_models",
]
