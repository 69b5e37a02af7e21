"""The architecture zoo: a small CNN by default, torchvision models by name, pretrained weights only from a local file.

Every model takes `channels`-channel images of any size and returns `n_classes` logits. torchvision models get their
first convolution resized to `channels` (pretrained RGB filters are summed, the usual trick for grayscale) and a new
head; inputs smaller than an architecture can take (vgg pools five times) are upsampled inside the model. Nothing is
ever downloaded: `pretrained_path` names a state-dict file on disk, and a missing file is a one-line error.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import StagebookError


class ConvBlock(nn.Sequential):
    """fastai's `ConvLayer` as the small CNN uses it (3×3 conv without bias, batch norm, ReLU), made and initialised
    as fastai makes it, in torch alone: loading or predicting with a model then needs no fastai import (1.5 s)."""

    def __init__(self, ni: int, nf: int, stride: int = 1):
        conv = nn.Conv2d(ni, nf, kernel_size=3, stride=stride, padding=1, bias=False)
        nn.init.kaiming_uniform_(conv.weight)  # fastai's init for a ReLU block, after torch's own (same random draws)
        norm = nn.BatchNorm2d(nf)
        with torch.no_grad():
            norm.bias.fill_(1e-3)
            norm.weight.fill_(1.0)
        super().__init__(conv, norm, nn.ReLU())


def small_cnn(n_classes: int, channels: int = 1, width: int = 16, dropout: float = 0.0) -> nn.Sequential:
    "Three conv blocks (conv, batch norm, ReLU), global pooling, dropout, linear head; fastai's layout and weights."
    return nn.Sequential(
        ConvBlock(channels, width), ConvBlock(width, 2 * width, stride=2), ConvBlock(2 * width, 4 * width, stride=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width, n_classes))


# name -> (torchvision builder, smallest input side the architecture accepts)
TORCHVISION = {"resnet18": ("resnet18", 8), "resnet34": ("resnet34", 8), "mobilenet_v2": ("mobilenet_v2", 8),
               "mobilenet_v3_small": ("mobilenet_v3_small", 8), "vgg11_bn": ("vgg11_bn", 32)}
ARCHITECTURES = ("small_cnn", *TORCHVISION)


class MinSize(nn.Module):
    "Upsample inputs smaller than `size` (bilinear) so that architectures with many poolings still fit small images."

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x):
        if min(x.shape[-2:]) < self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x)


def build(arch: str, n_classes: int, channels: int = 1, width: int = 16, dropout: float = 0.0,
          pretrained_path: str | Path | None = None) -> nn.Module:
    "The model `arch` for `n_classes`; `pretrained_path` loads torchvision-format weights from disk (head excluded)."
    if arch == "small_cnn":
        if pretrained_path:
            raise StagebookError("params: pretrained_path is set but arch small_cnn has no pretrained weights;"
                                 " set pretrained_path: null or choose a torchvision arch.")
        return small_cnn(n_classes, channels, width, dropout)
    if arch not in TORCHVISION:
        raise StagebookError(f"params: unknown arch {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    import torchvision

    name, min_size = TORCHVISION[arch]
    model = getattr(torchvision.models, name)(weights=None)  # never weights=...: that downloads
    if pretrained_path:
        model.load_state_dict(_read_weights(pretrained_path, arch))
    _adapt_input(model, channels)
    _replace_head(model, n_classes, dropout)
    return MinSize(model, min_size) if min_size > 8 else model


def _read_weights(path: str | Path, arch: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise StagebookError(f"{path}: pretrained weights for {arch} not found; copy the torchvision state-dict file"
                             " there (nothing is downloaded at run time) or set pretrained_path: null.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise StagebookError(f"{path}: not a readable torch state dict ({type(err).__name__}); save one with"
                             " torch.save(model.state_dict(), path).") from None
    return state.get("state_dict", state) if isinstance(state, dict) else state


def _first_conv(model: nn.Module) -> tuple[nn.Module, str]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return module, name
    raise StagebookError("model has no Conv2d layer")


def _set_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent = model
    *path, last = dotted.split(".")
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, last, new)


def _adapt_input(model: nn.Module, channels: int) -> None:
    "Give the first convolution `channels` inputs; pretrained RGB filters are summed (grayscale) or cycled."
    conv, name = _first_conv(model)
    if conv.in_channels == channels:
        return
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups if conv.groups == 1 else channels, conv.bias is not None)
    with torch.no_grad():
        if channels == 1:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            idx = torch.arange(channels) % conv.in_channels
            new.weight.copy_(conv.weight[:, idx] * conv.in_channels / channels)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_module(model, name, new)


def _replace_head(model: nn.Module, n_classes: int, dropout: float) -> None:
    "A fresh linear head for `n_classes`, behind dropout."
    if hasattr(model, "fc"):  # resnets
        model.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(model.fc.in_features, n_classes))
    else:  # mobilenets and vgg end in `classifier`, a Sequential whose last layer is Linear
        last = model.classifier[-1]
        model.classifier[-1] = nn.Sequential(nn.Dropout(dropout), nn.Linear(last.in_features, n_classes))


def last_conv(model: nn.Module) -> nn.Module:
    "The last Conv2d: where Grad-CAM looks."
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise StagebookError("model has no Conv2d layer for Grad-CAM")
    return convs[-1]
