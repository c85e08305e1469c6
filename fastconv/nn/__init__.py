"""fastconv.nn: a small training API on top of :mod:`fastconv.functional`.

Layers hold parameters and call ``fastconv.functional``; losses, optimisers with
PyTorch's update rules, a Keras-like ``fit`` loop, metrics (accuracy, confusion
matrix, AUROC equal to scikit-learn's) and class activation maps. ``nn.models`` has
torchvision's ResNet-18/50 and MobileNet-v2 (same parameter names: load a PyTorch
``state_dict``, or a checkpoint with ``nn.load_torch``), and ``nn.optimize(model)``
compiles a model for inference (BatchNorm folded, bias/residual/ReLU fused).

>>> import numpy as np
>>> from fastconv import nn
>>> model = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.MaxPool2d(2), nn.Flatten(),
...                       nn.Linear(8 * 3 * 3, 10))
>>> model(np.zeros((2, 1, 8, 8), np.float32)).shape
(2, 10)
"""
from .cam import (bilinear_resize, class_activation_map, save_cam_overlay, save_feature_maps,
                  save_filters)
from . import models
from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten,
                     GlobalAvgPool2d, LeakyReLU, Linear, MaxPool2d, Module, Parameter, ReLU,
                     ReLU6, Sequential, Sigmoid, glorot_normal, glorot_uniform, he_normal,
                     he_uniform, load_torch, read_metadata)
from .losses import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from .metrics import accuracy, auroc_from_output, confusion_matrix, roc_auc
from .models import BasicBlock, Bottleneck, InvertedResidual
from .optimize import OptimizedModel, optimize
from .optim import SGD, Adam
from .train import evaluate, fit, predict

__all__ = [
    "Module", "Parameter", "Conv2d", "Linear", "ReLU", "ReLU6", "LeakyReLU", "Sigmoid",
    "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "GlobalAvgPool2d", "Flatten", "Dropout",
    "BatchNorm2d", "Sequential", "BasicBlock", "Bottleneck", "InvertedResidual",
    "he_normal", "he_uniform", "glorot_normal", "glorot_uniform", "read_metadata",
    "load_torch", "models", "optimize", "OptimizedModel",
    "CrossEntropyLoss", "BCEWithLogitsLoss", "MSELoss", "SGD", "Adam",
    "fit", "evaluate", "predict",
    "accuracy", "confusion_matrix", "roc_auc", "auroc_from_output",
    "class_activation_map", "bilinear_resize", "save_cam_overlay", "save_feature_maps",
    "save_filters",
]
