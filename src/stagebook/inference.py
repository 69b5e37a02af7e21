"""Running a trained model: class probabilities in batches, on the device its weights are on.

Torch alone, so a stage, service or command that only predicts (stages 05 and 06, `stagebook promote`, `predict`,
`serve`) does not import fastai, which `stagebook.training` needs.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def predict_proba(model: nn.Module, x, batch_size: int = 1024) -> np.ndarray:
    "Softmax probabilities for (N, C, H, W) inputs, in eval mode."
    model.eval()
    x, device = torch.as_tensor(x), device_of(model)
    with torch.no_grad():
        return torch.cat([torch.softmax(model(x[i:i + batch_size].to(device)), 1).float().cpu()
                          for i in range(0, len(x), batch_size)]).numpy()


def device_of(model: nn.Module) -> torch.device:
    "Where the model's weights are (inputs follow the model, so prediction works on CPU and GPU alike)."
    return next(model.parameters(), torch.empty(0)).device
