"""The data audit: decode every image once, quarantine what cannot be used, and find duplicates of every kind.

Quarantine is a list, never a move: the files stay where they are and the manifest says why each is unusable.
Duplicates come in three kinds, all joined into clusters that the split keeps together:
- exact: the same bytes (sha256);
- same pixels: the same decoded image in another file format or with other metadata;
- near: a shifted, noisy, re-encoded or resized copy. Candidates come from an approximate nearest-neighbour index
  (faiss HNSW) over small normalised thumbnails, probed with shifted thumbnails too, so no all-pairs comparison is
  made; each candidate is then verified by the best correlation over small shifts at two scales (8 and 16 pixels:
  the small one forgives shifts, the large one resizing) and accepted at or below `near_threshold`.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from .errors import StagebookError

SCALES = (8, 16)          # thumbnail sides compared; the best scale decides (shift-robust small, resize-robust large)
MAX_SHIFT = {8: 1, 16: 2}  # pixels of shift searched at each scale
HNSW_LINKS = 16           # graph degree of the nearest-neighbour index
PROBE_SHIFTS = [(dx, dy) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
Image.MAX_IMAGE_PIXELS = 50_000_000  # a decompression bomb is quarantined, not decoded


@dataclass
class Inspection:
    "What decoding one file found."
    sha256: str
    status: str = "ok"              # 'ok' or 'quarantined: <reason>'
    converted: str = ""             # '', 'palette', 'alpha', 'cmyk', '16-bit', '1-bit', ...
    width: int = 0
    height: int = 0
    pixel_sha256: str = ""
    thumbs: dict = field(default_factory=dict)


def _to_standard_mode(img: Image.Image) -> tuple[Image.Image, str]:
    "8-bit L or RGB, and what conversion was needed ('' if none). Raises ValueError for modes we do not handle."
    mode = img.mode
    if mode in ("L", "RGB"):
        return img, ""
    if mode == "P":
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            return _flatten_alpha(rgba), "palette+alpha"
        return rgba.convert("RGB"), "palette"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _flatten_alpha(img.convert("RGBA")), "alpha"
    if mode == "CMYK":
        return img.convert("RGB"), "cmyk"
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L"), "16-bit"
    if mode == "1":
        return img.convert("L"), "1-bit"
    if mode in ("YCbCr", "LAB", "HSV"):
        return img.convert("RGB"), mode.lower()
    raise ValueError(f"unsupported mode {mode}")


def _flatten_alpha(rgba: Image.Image) -> Image.Image:
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def thumbnail(gray: Image.Image, side: int) -> np.ndarray:
    "A `side`×`side` float thumbnail."
    return np.asarray(gray.resize((side, side), Image.BILINEAR), dtype=np.float32)


def inspect_image(path: str) -> Inspection:
    "Decode one file (in a worker process): its hashes, size, mode conversion, thumbnails, or why it is unusable."
    data = Path(path).read_bytes()
    found = Inspection(hashlib.sha256(data).hexdigest())
    if not data:
        found.status = "quarantined: zero-byte file"
        return found
    try:
        with Image.open(io.BytesIO(data)) as img:  # decode the bytes already read for hashing
            img.load()
            found.width, found.height = img.size
            std, found.converted = _to_standard_mode(img)
    except Image.DecompressionBombError:
        found.status = "quarantined: image too large (decompression bomb guard)"
        return found
    except UnidentifiedImageError:
        found.status = "quarantined: not an image"
        return found
    except ValueError as err:
        found.status = f"quarantined: {err}"
        return found
    except (OSError, SyntaxError, EOFError) as err:
        text = str(err).lower()
        reason = "truncated" if "truncated" in text or "ended" in text or isinstance(err, EOFError) else "corrupt"
        found.status = f"quarantined: {reason} image ({type(err).__name__})"
        return found
    if std.width < 2 or std.height < 2:
        found.status = "quarantined: smaller than 2x2 pixels"
        return found
    pixels = np.asarray(std.convert("RGB"))
    found.pixel_sha256 = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
    gray = std.convert("L")
    found.thumbs = {side: thumbnail(gray, side) for side in SCALES}
    return found


def inspect_all(paths: list[str], workers: int | None = None, progress: bool = True) -> list[Inspection]:
    "Inspect every file once, in parallel processes, in the order given."
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(256, len(paths) // (workers * 8) or 1))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(paths), desc="audit: decoding", unit="img", mininterval=0.5)
    out = []
    if workers == 1 or len(paths) < 64:
        iterator = map(inspect_image, paths)
        pool = None
    else:
        pool = get_context("fork" if os.name == "posix" else "spawn").Pool(workers)
        iterator = pool.imap(inspect_image, paths, chunksize=chunk)
    try:
        for found in iterator:
            out.append(found)
            if bar is not None:
                bar.update()
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    return out


def _normalise(thumbs: np.ndarray) -> np.ndarray:
    "Zero mean, unit norm per thumbnail (flat), so brightness and contrast changes do not matter."
    flat = thumbs.reshape(len(thumbs), -1).astype(np.float32)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return flat / np.where(norm > 0, norm, 1)


def _shifted(thumbs: np.ndarray, dx: int, dy: int) -> np.ndarray:
    "Thumbnails moved by (dx, dy) pixels, the uncovered edge filled with each thumbnail's border median."
    out = np.empty_like(thumbs)
    fill = np.median(np.concatenate([thumbs[:, 0, :], thumbs[:, -1, :], thumbs[:, :, 0], thumbs[:, :, -1]], axis=1), axis=1)
    out[:] = fill[:, None, None]
    h, w = thumbs.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = thumbs[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def candidate_pairs(thumbs: np.ndarray, neighbours: int, within: float) -> np.ndarray:
    """Pairs (i < j) worth verifying: approximate nearest neighbours (an HNSW graph index, so no all-pairs comparison)
    of each item and of its shifted probes, kept when 1 - correlation <= `within`."""
    import faiss

    n = len(thumbs)
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    k = min(neighbours + 1, n)
    points = np.ascontiguousarray(_normalise(thumbs))
    faiss.omp_set_num_threads(1)  # a graph built by one thread is the same graph every run: reproducible clusters
    index = faiss.IndexHNSWFlat(points.shape[1], HNSW_LINKS)
    index.hnsw.efSearch = max(64, 4 * k)
    index.add(points)
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # searching a fixed graph is deterministic in any thread count
    found = []
    for dx, dy in PROBE_SHIFTS:
        probe = points if (dx, dy) == (0, 0) else np.ascontiguousarray(_normalise(_shifted(thumbs, dx, dy)))
        squared, nearest = index.search(probe, k)
        close = (nearest.ravel() >= 0) & (squared.ravel() / 2 <= within)  # unit vectors: |a - b|^2 = 2 (1 - corr)
        rows = np.repeat(np.arange(n), k)
        found.append(np.stack([rows[close], nearest.ravel()[close]], axis=1))
    pairs = np.concatenate(found)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs.sort(axis=1)
    return np.unique(pairs, axis=0)


def shift_distance(a: np.ndarray, b: np.ndarray, max_shift: int) -> np.ndarray:
    "1 - best Pearson correlation over the overlap of a[k] and b[k] shifted by up to `max_shift` pixels (vectorised)."
    best = np.full(len(a), 2.0, dtype=np.float32)
    h, w = a.shape[1:]
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            wa = a[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)].reshape(len(a), -1)
            wb = b[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)].reshape(len(a), -1)
            wa = wa - wa.mean(axis=1, keepdims=True)
            wb = wb - wb.mean(axis=1, keepdims=True)
            denom = np.sqrt((wa * wa).sum(axis=1) * (wb * wb).sum(axis=1))
            corr = np.where(denom > 0, (wa * wb).sum(axis=1) / np.where(denom > 0, denom, 1), 0.0)
            flat = (wa.std(axis=1) == 0) & (wb.std(axis=1) == 0)  # two blank images are the same image
            corr = np.where(flat, 1.0, corr)
            best = np.minimum(best, 1.0 - corr)
    return best


def near_duplicate_pairs(thumbs_by_scale: dict[int, np.ndarray], threshold: float, neighbours: int = 8,
                         batch: int = 50_000) -> pd.DataFrame:
    "Verified near-duplicate pairs (i, j, distance): distance is the best over scales of `shift_distance`."
    # Copies sit within a few times `threshold` of a shifted probe at the small scale (resized ones furthest).
    within = max(0.04, 4 * threshold)
    pairs = candidate_pairs(thumbs_by_scale[SCALES[0]], neighbours, within)
    small, large = SCALES
    keep = []
    for start in range(0, len(pairs), batch):
        part = pairs[start:start + batch]
        dist = shift_distance(thumbs_by_scale[small][part[:, 0]], thumbs_by_scale[small][part[:, 1]], MAX_SHIFT[small])
        undecided = np.flatnonzero((dist > threshold) & (dist <= within))  # only these need the costlier scale
        if len(undecided):
            sub = part[undecided]
            dist[undecided] = np.minimum(dist[undecided], shift_distance(
                thumbs_by_scale[large][sub[:, 0]], thumbs_by_scale[large][sub[:, 1]], MAX_SHIFT[large]))
        ok = dist <= threshold
        keep.append(pd.DataFrame({"i": part[ok, 0], "j": part[ok, 1], "distance": dist[ok]}))
    return pd.concat(keep, ignore_index=True) if keep else pd.DataFrame(columns=["i", "j", "distance"])


def connected_clusters(n: int, edges: list[np.ndarray]) -> np.ndarray:
    "A cluster number per item from undirected edges (pairs of item indices)."
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.concatenate([e.reshape(-1, 2) for e in edges if len(e)]) if any(len(e) for e in edges) else np.empty((0, 2), int)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def same_value_edges(values: pd.Series) -> np.ndarray:
    "Edges chaining together the items that share a (non-empty) value."
    frame = pd.DataFrame({"v": values.values, "i": np.arange(len(values))})
    frame = frame[frame.v.astype(str) != ""]
    first = frame.groupby("v").i.transform("min")
    edges = np.stack([first.values, frame.i.values], axis=1)
    return edges[edges[:, 0] != edges[:, 1]]


@dataclass
class AuditResult:
    "The manifest with audit columns added, plus the verified near-duplicate pairs."
    items: pd.DataFrame
    near_pairs: pd.DataFrame

    def summary(self, min_class_items: int) -> dict:
        usable = self.items[self.items.status == "ok"]
        clusters = usable[usable.cluster != ""].groupby("cluster").size()
        dup_clusters = clusters[clusters > 1]
        conflicts = usable[usable.cluster.isin(dup_clusters.index)].groupby("cluster").label.nunique()
        per_class = usable.label.value_counts()
        return {"items": len(self.items), "usable": len(usable), "quarantined": int((self.items.status != "ok").sum()),
                "converted": int((usable.converted != "").sum()),
                "exact_duplicate_items": int(usable.duplicated("sha256", keep="first").sum()),
                "same_pixel_items": int((usable.duplicated("pixel_sha256", keep="first")
                                         & ~usable.duplicated("sha256", keep="first")).sum()),
                "near_duplicate_pairs": len(self.near_pairs), "duplicate_clusters": len(dup_clusters),
                "largest_cluster": int(clusters.max()) if len(clusters) else 1,
                "label_conflicts": int((conflicts > 1).sum()),
                "small_classes": sorted(per_class[per_class < min_class_items].index.astype(str))}


def audit(manifest: pd.DataFrame, root: Path, near_threshold: float, neighbours: int = 8, workers: int | None = None,
          progress: bool = True) -> AuditResult:
    "Decode and hash every manifest row; add status, converted, sizes, pixel hash and a duplicate `cluster` per row."
    if not 0 <= near_threshold < 1:
        raise StagebookError(f"near_threshold={near_threshold}: must lie in [0, 1) (1 - correlation; 0.01 is a good start).")
    paths = [str(root / p) for p in manifest.path]
    found = inspect_all(paths, workers=workers, progress=progress)
    items = manifest.copy().reset_index(drop=True)
    items["sha256"] = [f.sha256 for f in found]
    items["status"] = [f.status for f in found]
    items["converted"] = [f.converted for f in found]
    items["width"] = [f.width for f in found]
    items["height"] = [f.height for f in found]
    items["pixel_sha256"] = [f.pixel_sha256 for f in found]

    ok = np.flatnonzero(items.status.values == "ok")
    near = pd.DataFrame(columns=["i", "j", "distance"])
    if len(ok) > 1:
        thumbs = {s: np.stack([found[i].thumbs[s] for i in ok]) for s in SCALES}
        local = near_duplicate_pairs(thumbs, near_threshold, neighbours)
        near = pd.DataFrame({"i": ok[local.i.astype(int)], "j": ok[local.j.astype(int)], "distance": local.distance})
    edges = [same_value_edges(items.sha256), same_value_edges(items.pixel_sha256),
             near[["i", "j"]].to_numpy(dtype=np.int64)]
    items["cluster"] = stable_cluster_ids(connected_clusters(len(items), edges), items.sha256)
    return AuditResult(items, near)


def stable_cluster_ids(components: np.ndarray, keys: pd.Series) -> pd.Series:
    "Name each multi-item cluster after its smallest member key ('dup:<12 hex>'), so names survive re-runs; '' if alone."
    frame = pd.DataFrame({"c": components, "k": keys.values})
    smallest = frame.groupby("c").k.transform("min")
    size = frame.groupby("c").k.transform("size")
    return pd.Series(np.where(size > 1, "dup:" + smallest.str[:12], ""), index=keys.index)
