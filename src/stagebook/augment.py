"""Data augmentation on whole batches of tensors, with the valid bounds of each transform checked against params.

Transforms run on the batch the loader already holds in memory (one `affine_grid` + `grid_sample` per batch), so
augmentation never brings back per-image decoding. Randomness comes from the loader's seeded generator: same seed,
same augmented batches.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import StagebookError

# transform -> (smallest, largest) value it may take in params, and what it means
BOUNDS = {
    "rotate": (0.0, 45.0, "largest rotation in degrees"),
    "translate": (0.0, 0.3, "largest shift as a fraction of the image side"),
    "scale_min": (0.5, 1.0, "smallest zoom factor"),
    "scale_max": (1.0, 2.0, "largest zoom factor"),
    "hflip": (0.0, 1.0, "probability of a horizontal flip (0 for digits and text)"),
    "noise": (0.0, 0.5, "standard deviation of added Gaussian noise"),
}


@dataclass(frozen=True)
class Augment:
    rotate: float = 0.0
    translate: float = 0.0
    scale_min: float = 1.0
    scale_max: float = 1.0
    hflip: float = 0.0
    noise: float = 0.0

    @property
    def identity(self) -> bool:
        return self == Augment()

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        "A randomly transformed copy of the batch `x` (N, C, H, W)."
        if self.identity:
            return x
        n = x.shape[0]

        def uniform(lo, hi):
            return lo + (hi - lo) * torch.rand(n, generator=generator)

        angle = torch.deg2rad(uniform(-self.rotate, self.rotate))
        scale = uniform(self.scale_min, self.scale_max)
        shift_x, shift_y = uniform(-self.translate, self.translate) * 2, uniform(-self.translate, self.translate) * 2
        flip = torch.where(torch.rand(n, generator=generator) < self.hflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos * flip, -sin, shift_x], 1), torch.stack([sin * flip, cos, shift_y], 1)], 1)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if self.noise:
            out = (out + self.noise * torch.randn(out.shape, generator=generator)).clamp(0, 1)
        return out


def from_params(spec: dict | None, source: str = "params") -> Augment:
    "An `Augment` from the params mapping `augment: {rotate: 10, ...}`; unknown names or values out of bounds stop here."
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(BOUNDS))
    if unknown:
        raise StagebookError(f"{source}: augment has unknown transform(s) {unknown}; valid: {', '.join(BOUNDS)}.")
    for name, value in spec.items():
        lo, hi, meaning = BOUNDS[name]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
            raise StagebookError(f"{source}: augment.{name} = {value!r} is outside its valid range [{lo}, {hi}]"
                                 f" ({meaning}); pick a value inside it.")
    return Augment(**{k: float(v) for k, v in spec.items()})


def preview(images: torch.Tensor, augment: Augment, copies: int = 7, seed: int = 0):
    "A matplotlib figure: each row one image, first column the original, then `copies` augmented versions."
    import matplotlib.pyplot as plt

    generator = torch.Generator().manual_seed(seed)
    rows = len(images)
    # 0.7 in a cell and 8 pt text: printed at up to the text width, every label stays at 7 pt or more
    fig, axes = plt.subplots(rows, copies + 1, figsize=(0.7 * (copies + 1), 0.7 * rows), squeeze=False)
    for r, image in enumerate(images):
        batch = augment(image[None].repeat(copies, 1, 1, 1), generator)
        for c, shown in enumerate([image, *batch]):
            ax = axes[r, c]
            ax.imshow(shown.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([]); ax.set_yticks([])
        axes[r, 0].set_ylabel(f"#{r}", fontsize=8)
    axes[0, 0].set_title("original", fontsize=8)
    fig.suptitle("Augmentation preview: " + (", ".join(f"{k}={v:g}" for k, v in vars(augment).items()
                                                         if v != getattr(Augment(), k)) or "none"), fontsize=9)
    return fig
