"""Planted copies: the transforms a near-copy detector must see through, one family at a time.

The audit's self-test plants one copy per family of a sample of the team's own images and counts how many it finds;
`bench/` plants them in generated collections of many sizes and sources. Strengths are relative to the image's own
side, so a 16-px and a 128-px image are moved, cropped and blurred by the same share of themselves.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter

SHIFT = 0.10            # up to 10% of the side, each axis
CROP = (0.02, 0.10)     # share of each side removed in all, split at random between its two edges
GAIN, OFFSET = (0.8, 1.2), (-20, 20)
NOISE_SIGMA = (4, 12)   # grey levels of 255
BLUR = (0.3, 1.0)       # Gaussian radius per 32 px of side
JPEG_QUALITY = (30, 80)
RESIZE = (0.5, 2.0)     # factor on the side, away from 1 by at least 10%
MIN_RESIZED = 16        # px: below this a downsized copy no longer carries its original


def _fill(pixels: np.ndarray) -> np.ndarray:
    "The border's median colour: what a shift uncovers."
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]]).reshape(-1, *pixels.shape[2:])
    return np.median(border, axis=0).astype(pixels.dtype)


def shift(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img)
    h, w = pixels.shape[:2]
    reach_x, reach_y = (max(1, int(SHIFT * s)) for s in (w, h))  # at least a pixel, even in an 8-px image
    dx, dy = 0, 0
    while dx == 0 and dy == 0:
        dx, dy = int(rng.integers(-reach_x, reach_x + 1)), int(rng.integers(-reach_y, reach_y + 1))
    out = np.empty_like(pixels)
    out[...] = _fill(pixels)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = pixels[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return Image.fromarray(out, img.mode)


def crop(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    cut_w, cut_h = (max(1, int(round(rng.uniform(*CROP) * s))) for s in (w, h))
    left, top = int(rng.integers(0, cut_w + 1)), int(rng.integers(0, cut_h + 1))
    return img.crop((left, top, w - (cut_w - left), h - (cut_h - top)))


def brightness_contrast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32) * rng.uniform(*GAIN) + rng.uniform(*OFFSET)
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), img.mode)


def noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(img, dtype=np.float32)
    noisy = pixels + rng.normal(0, rng.uniform(*NOISE_SIGMA), pixels.shape)
    return Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), img.mode)


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR) * min(img.size) / 32))


def reencode(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
    with Image.open(io.BytesIO(buffer.getvalue())) as out:
        return out.convert(img.mode)


def resize(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    "Resized by 0.5-2x; a copy is never made smaller than 16 px (or than its original, if that is smaller)."
    lower = max(RESIZE[0], min(1.0, MIN_RESIZED / min(img.size)))
    factor = 1.0
    while abs(factor - 1) < 0.1:
        factor = float(np.exp(rng.uniform(np.log(lower), np.log(RESIZE[1]))))
    w, h = img.size
    size = (max(2, int(round(w * factor))), max(2, int(round(h * factor))))
    method = (Image.BILINEAR, Image.BICUBIC, Image.LANCZOS)[int(rng.integers(3))]
    return img.resize(size, method)


FAMILIES: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "shift": shift, "crop": crop, "brightness_contrast": brightness_contrast, "noise": noise, "blur": blur,
    "reencode": reencode, "resize": resize}


def plant(img: Image.Image, family: str, rng: np.random.Generator) -> Image.Image:
    "A copy of `img` (mode L or RGB) transformed by one family."
    return FAMILIES[family](img, rng)


# ---- Collections to plant copies in: data we did not make for the test ----

NATURAL = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "brick", "grass", "gravel",
           "hubble_deep_field", "immunohistochemistry", "page", "text", "retina", "cell")


def digit_images(side: int) -> list[Image.Image]:
    "scikit-learn's 1,797 handwritten digits (8 px, 17 grey levels), resized to `side` px (bilinear)."
    from sklearn.datasets import load_digits

    pixels = np.rint(load_digits().images * (255 / 16)).astype(np.uint8)
    return [Image.fromarray(p, "L").resize((side, side), Image.BILINEAR) if side != 8 else Image.fromarray(p, "L")
            for p in pixels]


SCALES = (1.0, 0.7, 0.5, 0.35)  # of the photograph, for tiles of natural images


def natural_images(side: int, count: int, seed: int = 0, min_std: float = 12.0, turns: int = 1) -> list[Image.Image]:
    """Up to `count` distinct `side`-px tiles of scikit-image's bundled photographs (grey and colour), at scales 1,
    0.7, 0.5 and 0.35, without the flat ones (grey std < `min_std`), no two of which share a pixel of their
    photograph (`natural_tiles`)."""
    return [tile for tile, _, _ in natural_tiles(side, count, seed, min_std, turns)]


def natural_tiles(side: int, count: int, seed: int = 0, min_std: float = 12.0, turns: int = 1):
    """`natural_images` with where each tile came from: (tile, photograph number, (top, left, bottom, right) in that
    photograph's pixels). Distinct by where they came from, not by any detector's judgement: tiles cut from
    overlapping regions at two scales, or from both sides of one straight edge, are resized, cropped or moved copies
    of one another, and counting them as distinct originals made a detector that found them look as if it merged
    distinct images. Candidate tiles are taken in a seeded random order, each kept only if its region of the
    photograph is still free. `turns` > 1 also cuts tiles from the photographs turned by 90, 180 and 270 degrees, each
    a photograph of its own: more tiles (a turned tile is no planted transform's copy of an unturned one), for
    collections larger than the photographs' area allows (about 6,000 tiles of 16 px unturned)."""
    import skimage.data

    rng = np.random.default_rng(seed)
    candidates = []   # (photo number, scale number, left, top) in the scaled photo's pixels
    photos, scaled = [], {}
    for name in NATURAL:
        photo = Image.fromarray(getattr(skimage.data, name)())
        photo = photo.convert("RGB") if photo.mode not in ("L", "RGB") else photo
        photos += [photo.rotate(90 * turn, expand=True) for turn in range(turns)]
    for p, photo in enumerate(photos):
        for s, scale in enumerate(SCALES):
            width, height = int(photo.width * scale), int(photo.height * scale)
            scaled[p, s] = photo.resize((width, height), Image.LANCZOS)
            candidates += [(p, s, left, top) for top in range(0, height - side + 1, side)
                           for left in range(0, width - side + 1, side)]
    free = [np.ones((photo.height, photo.width), bool) for photo in photos]
    tiles = []
    for k in rng.permutation(len(candidates)):
        p, s, left, top = candidates[k]
        scale = SCALES[s]
        box = (int(top / scale), int(left / scale), int(np.ceil((top + side) / scale)),
               int(np.ceil((left + side) / scale)))
        region = (slice(box[0], box[2]), slice(box[1], box[3]))
        if not free[p][region].all():
            continue
        tile = scaled[p, s].crop((left, top, left + side, top + side))
        if np.asarray(tile.convert("L"), dtype=np.float32).std() < min_std:
            continue
        free[p][region] = False
        tiles.append((tile, p, box))
        if len(tiles) == count:
            break
    return tiles
