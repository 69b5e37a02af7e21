"""The data audit: decode every image once, quarantine what cannot be used, and find duplicates of every kind.

Quarantine is a list, never a move: the files stay where they are and the manifest says why each is unusable.
Duplicates come in three kinds, all joined into clusters that the split keeps together:
- exact: the same bytes (sha256);
- same pixels: the same decoded image in another file format or with other metadata;
- near: a shifted, cropped, re-lit, noisy, blurred, re-encoded or resized copy (`stagebook.nearcopy`: candidates
  from an approximate nearest-neighbour index, each verified after alignment). Near clusters do not chain: every
  member is a verified copy of its cluster's representative.
The threshold for "near" is chosen on the collection itself (`near_threshold: auto`) by planting copies of a sample
of its images (`stagebook.calibration`); a fixed threshold is checked the same way. Either way the audit reports how
many planted copies it found.
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from . import auditcache, calibration, cpus, nearcopy, neighbourhood
from .dataconfig import flatten_alpha
from .errors import StagebookError
from .startup import forking_safely

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
    colour: str = ""                # 'grey' or 'RGB' (an RGB file whose channels are all equal is grey)
    thumb: np.ndarray | None = None  # the 32-px grey thumbnail near-copy search compares


def _to_standard_mode(img: Image.Image) -> tuple[Image.Image, str]:
    "8-bit L or RGB, and what conversion was needed ('' if none). Raises ValueError for modes we do not handle."
    mode = img.mode
    if mode in ("L", "RGB"):
        return img, ""
    if mode == "P":
        rgba = img.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            return flatten_alpha(rgba), "palette+alpha"
        return rgba.convert("RGB"), "palette"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return flatten_alpha(img.convert("RGBA")), "alpha"
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


def inspect_image(path: str, known: frozenset = frozenset()) -> Inspection:
    """Decode one file (in a worker process): its hashes, size, mode conversion, thumbnails, or why it is unusable.
    A file whose sha256 is in `known` (the audit cache) is only hashed: its `thumb` stays None and status ''."""
    data = Path(path).read_bytes()
    found = Inspection(hashlib.sha256(data).hexdigest())
    if found.sha256 in known:
        found.status = ""
        return found
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
    found.colour = "grey" if std.mode == "L" or (np.array_equal(pixels[..., 0], pixels[..., 1])
                                                  and np.array_equal(pixels[..., 1], pixels[..., 2])) else "RGB"
    found.pixel_sha256 = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
    found.thumb = nearcopy.thumbnail(std.convert("L"))
    return found


_KNOWN: frozenset = frozenset()  # the cache's sha256s, handed to forked workers by inheritance, not by pickling


def _inspect_known(path: str) -> Inspection:
    return inspect_image(path, _KNOWN)


def inspect_all(paths: list[str], workers: int | None = None, progress: bool = True,
                known: frozenset = frozenset()):
    """Inspect every file once, in parallel processes; yields (position, Inspection) in the order given, so the
    caller keeps only what it needs (memory does not hold every decoded image)."""
    global _KNOWN
    workers = workers or cpus.available()
    chunk = max(1, min(256, len(paths) // (workers * 8) or 1))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(paths), desc="audit: decoding", unit="img", mininterval=0.5)
    _KNOWN = frozenset(known)
    if workers == 1 or len(paths) < 64 or os.name != "posix":
        iterator = map(_inspect_known, paths)
        pool = None
    else:
        with forking_safely():  # the workers are forked here
            pool = get_context("fork").Pool(workers)
        iterator = pool.imap(_inspect_known, paths, chunksize=chunk)
    try:
        for position, found in enumerate(iterator):
            yield position, found
            if bar is not None:
                bar.update()
    finally:
        _KNOWN = frozenset()
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()


def take_rows_in_place(rows: np.ndarray, order: np.ndarray) -> np.ndarray:
    """`rows[order]` (distinct row numbers), made in `rows`' own memory: the first len(order) rows become it and are
    returned as a view; the rest are left in some order. The permutation is applied cycle by cycle with one spare
    row, so the audit holds its thumbnails once, not twice (a Python loop: about a second per 300k rows)."""
    count = len(rows)
    others = np.setdiff1d(np.arange(count), order, assume_unique=True)
    source = np.concatenate([np.asarray(order, dtype=np.int64), others]).tolist()  # position k takes row source[k]
    done = bytearray(count)
    for start in range(count):
        if done[start] or source[start] == start:
            continue
        spare = rows[start].copy()
        k = start
        while True:
            done[k] = 1
            src = source[k]
            if src == start:
                rows[k] = spare
                break
            rows[k] = rows[src]
            k = src
    return rows[:len(order)]


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
    "The manifest with audit columns added, the verified near-copy pairs (item rows) and the self-test."
    items: pd.DataFrame
    near_pairs: pd.DataFrame
    self_test: calibration.SelfTest | None = None
    reuse: dict | None = None       # with a cache: files decoded / taken from it / not read, pairs verified / remembered
    seconds: dict | None = None     # where the time went: decode, index, self_test, pairs, clusters
    peak_mib: dict | None = None    # this process's peak memory at the end of each of those steps

    def reuse_sentence(self) -> str:
        r = self.reuse
        return "" if not r else (f"audit cache: {r['files_decoded']} file(s) decoded, {r['files_cached']} taken from the"
                                 f" cache ({r.get('files_unread', 0)} unchanged on disk, not read again);"
                                 f" {r.get('images_searched', 0)} image(s) searched for candidates;"
                                 f" {r['pairs_verified']} pair(s) verified, {r['pairs_remembered']} remembered")

    def summary(self, min_class_items: int) -> dict:
        usable = self.items[self.items.status == "ok"]
        clusters = usable[usable.cluster != ""].groupby("cluster").size()
        dup_clusters = clusters[clusters > 1]
        conflicts = usable[usable.cluster.isin(dup_clusters.index)].groupby("cluster").label.nunique()
        per_class = usable.label.value_counts()
        cluster = self.items.cluster.to_numpy()
        unclustered = int((cluster[self.near_pairs.i.to_numpy(dtype=int)] != cluster[self.near_pairs.j.to_numpy(dtype=int)]).sum())
        return {"items": len(self.items), "usable": len(usable), "quarantined": int((self.items.status != "ok").sum()),
                "converted": int((usable.converted != "").sum()),
                "exact_duplicate_items": int(usable.duplicated("sha256", keep="first").sum()),
                "same_pixel_items": int((usable.duplicated("pixel_sha256", keep="first")
                                         & ~usable.duplicated("sha256", keep="first")).sum()),
                "near_duplicate_pairs": len(self.near_pairs), "duplicate_clusters": len(dup_clusters),
                "largest_cluster": int(clusters.max()) if len(clusters) else 1,
                "near_pairs_between_clusters": unclustered,
                "largest_near_unit": int(usable[usable.near_unit != ""].groupby("near_unit").size().max())
                if "near_unit" in usable and (usable.near_unit != "").any() else 1,
                "label_conflicts": int((conflicts > 1).sum()),
                "small_classes": sorted(per_class[per_class < min_class_items].index.astype(str)),
                **(self.self_test.numbers() if self.self_test else {})}


def parse_threshold(value, where: str = "near_threshold") -> float | None:
    "None for 'auto' (choose from planted copies), else a number in [0, 1)."
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not 0 <= number < 1:
        raise StagebookError(f"{where}={value!r}: must be 'auto' (chosen by planting copies) or a number in [0, 1)"
                             " (1 - correlation after alignment; 0.006 suits 8-px digits).")
    return number


def audit(manifest: pd.DataFrame, root: Path, near_threshold="auto", neighbours: int = 8, workers: int | None = None,
          progress: bool = True, seed: int = 0, cache: Path | None = None, report=None) -> AuditResult:
    """Decode and hash every manifest row; add status, converted, sizes, pixel hash and a duplicate `cluster` per row.
    `near_threshold`: 'auto' or a number (see `parse_threshold`); the self-test runs either way. `cache`: a folder
    where per-file results and verified pair distances are kept (`stagebook.auditcache`): a re-run decodes only new or
    changed files and verifies only new pairs, and gives the same result as an audit without it. `report(text)`:
    where the audit has got, for a person watching (stage 01 passes `stage.progress`)."""
    import time

    from .auditcache import FileCache, PairMemo, stat_keys

    began_ns = time.time_ns()
    threshold = parse_threshold(near_threshold)
    clock = _Clock()
    names = manifest.path.tolist()
    paths = [os.path.join(str(root), p) for p in names]  # not Path / p: 10 µs each
    files = FileCache(cache) if cache else None
    columns = {k: np.full(len(paths), None, object) for k in ("sha256", "status", "converted", "width", "height",
                                                              "pixel_sha256", "colour")}
    thumbs_of = np.zeros((len(paths), nearcopy.THUMB, nearcopy.THUMB), np.uint8)
    new = []
    report = report or (lambda text: None)
    # Files unchanged on disk since the cache saw them are not read at all: their results come from the cache.
    stats = stat_keys(paths, names) if files else None
    unchanged = files.recall(stats[0]) if files else np.full(len(paths), None, object)
    known = np.not_equal(unchanged, None)
    todo = np.flatnonzero(~known).tolist()
    clock.lap("stat")
    if len(todo) < len(paths):
        kept = np.flatnonzero(known)
        fields = files.take(unchanged[kept].tolist(), thumbs_of, kept)
        columns["sha256"][kept] = unchanged[kept]
        for key, values in fields.items():
            columns[key][kept] = values
    clock.lap("cached")
    every = max(1, len(todo) // 50)
    not_read = "" if len(todo) == len(paths) else f" ({len(paths) - len(todo):,} unchanged, not read)"
    for done, found in inspect_all([paths[at] for at in todo], workers=workers, progress=progress,
                                   known=files.known() if files else ()):
        at = todo[done]
        if done % every == 0:
            report(f"audit: {done:,}/{len(todo):,} images decoded{not_read}")
        if files is not None and found.sha256 in files and found.thumb is None and found.status == "":
            fields, thumb = files.get(found.sha256)
            found = Inspection(found.sha256, **fields)
            found.thumb = thumb
        elif files is not None:
            new.append(found)
        for key, column in columns.items():
            column[at] = getattr(found, key)
        if found.thumb is not None:
            thumbs_of[at] = found.thumb
    items = manifest.copy().reset_index(drop=True)
    for key, values in columns.items():
        items[key] = values.tolist()  # from Python values, as pandas types them (int64, str)
    unread = len(paths) - len(todo)
    del columns, paths, names, todo, unchanged  # Python strings: 200 bytes an image, not needed past here
    clock.lap("decode")

    # Items with the same pixels are one image to the near-copy search: one representative each (smallest path),
    # searched in the order of their pixel hash, so the search depends on the collection, not on file order.
    ok = items.index[items.status == "ok"]
    reps = items.loc[ok].sort_values("path").drop_duplicates("pixel_sha256").sort_values("pixel_sha256").index.to_numpy()
    near = pd.DataFrame({"i": np.empty(0, int), "j": np.empty(0, int), "distance": np.empty(0, np.float32)})
    component = np.full(len(reps), -1)
    tested, memo, searched = None, None, 0
    if len(reps) > 1:
        thumbs = take_rows_in_place(thumbs_of, reps)  # not a copy: 1 KB an image less at the peak
        sizes = items[["width", "height"]].to_numpy(dtype=np.int64)[reps]
        report(f"audit: indexing {len(reps):,} distinct images for near copies")
        rep_hashes = items.pixel_sha256.iloc[reps].tolist()
        index, tables, searched, keepable = _candidates(thumbs, rep_hashes, neighbours + 1, cache)
        if cache is not None and keepable:  # kept now, so the tables need not be held through the pairs step
            auditcache.save_neighbours(cache, tables)
        rows, squared = tables.rows, tables.squared
        del tables  # its lists and moved keys (600 bytes an image) go before the pairs are made from the rest
        candidates = index.self_pairs(thumbs, neighbours + 1, tables=(rows, squared))
        del rows, squared
        clock.lap("index")
        report("audit: self-test (planted copies)")
        tested = _self_test(root, items.path, reps, index, thumbs, sizes, neighbours, threshold, seed, items.sha256)
        clock.lap("self_test")
        report(f"audit: searching and verifying near copies among {len(reps):,} images")
        memo = PairMemo(cache, rep_hashes) if cache else None
        del rep_hashes
        pairs = nearcopy.near_pairs(thumbs, sizes, tested.threshold, neighbours, index, memo=memo, pairs=candidates)
        del candidates
        clock.lap("pairs")
        component = nearcopy.star_clusters(len(reps), pairs, np.arange(len(reps)))  # rows are in pixel-hash order
        near = pd.DataFrame({"i": reps[pairs.i.astype(int)], "j": reps[pairs.j.astype(int)], "distance": pairs.distance})
        near = near.assign(i=near[["i", "j"]].min(axis=1), j=near[["i", "j"]].max(axis=1)).sort_values(["i", "j"],
                                                                                                      ignore_index=True)
        clock.lap("clusters")
        if memo is not None:
            memo.write()
    if files is not None:
        files.write(new, set(items.sha256), (*stats, items.sha256.tolist(), began_ns))
    clock.lap("cache_writes")
    # Every usable item joins its pixel representative's star cluster; exact copies are joined by their bytes too.
    cluster_of = np.arange(len(items)) + len(reps)
    same_pixels = pd.factorize(items.pixel_sha256)[0]  # a number per pixel hash
    rep_of = np.zeros(same_pixels.max(initial=0) + 1, np.int64)
    rep_of[same_pixels[reps]] = np.arange(len(reps))
    cluster_of[ok] = component[rep_of[same_pixels[ok]]]
    edges = [same_value_edges(items.sha256), same_value_edges(pd.Series(cluster_of).astype(str))]
    items["cluster"] = stable_cluster_ids(connected_clusters(len(items), edges), items.sha256)
    # The split keeps every verified pair together, so it follows chains the clusters do not (`near_unit`).
    chained = connected_clusters(len(items), edges + [near[["i", "j"]].to_numpy(dtype=np.int64)])
    items["near_unit"] = stable_cluster_ids(chained, items.sha256).str.replace("dup:", "near:", regex=False)
    reuse = None if files is None else {"files_decoded": len(new), "files_cached": len(items) - len(new),
                                        "files_unread": unread,
                                        "images_searched": searched,
                                        "pairs_verified": memo.verified if memo else 0,
                                        "pairs_remembered": memo.remembered if memo else 0}
    clock.lap("clusters")
    return AuditResult(items, near, tested, reuse, clock.laps, clock.peaks)


class _Clock:
    "Seconds per named step, in order, and this process's peak memory (MiB) at the end of each (`peaks`)."

    def __init__(self):
        import time
        self._now, self.laps, self.peaks = time.perf_counter, {}, {}
        self._last = self._now()

    def lap(self, name: str) -> None:
        import resource
        now = self._now()
        self.laps[name] = self.laps.get(name, 0.0) + now - self._last
        self.peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self._last = now


def _candidates(thumbs: np.ndarray, pixel_hashes: np.ndarray, k: int, cache: Path | None):
    """The candidate index, its probe tables (`neighbourhood.Tables`), how many images were searched from scratch,
    and whether the tables may be kept. With a cache, the tables the last audit left are updated for what changed,
    with the coarse lists they were made with (`neighbourhood.reusable`): the result is what a search from scratch
    over those lists gives. Rows are numbered by pixel hash, whose first 60 bits are the ids that ties and the cache
    go by (if two hashes share them, nothing is remembered)."""
    ids = np.array([int(h[:15], 16) for h in pixel_hashes], dtype=np.int64)
    keepable = len(ids) < 2 or bool((np.diff(ids) > 0).all())
    memo = auditcache.load_neighbours(cache) if cache is not None and keepable else None
    if not neighbourhood.reusable(memo, len(thumbs), k):
        index = nearcopy.CandidateIndex(thumbs, ids if keepable else None)
        return index, neighbourhood.build(index, thumbs, k, len(thumbs)), len(thumbs), keepable
    at = np.clip(np.searchsorted(memo.ids, ids), 0, max(len(memo.ids) - 1, 0))
    known = memo.ids[at] == ids if len(memo.ids) else np.zeros(len(ids), bool)
    whole = np.empty((len(ids), 36), np.int8)  # the unmoved keys: remembered, or made for the new images
    whole[known] = memo.moved[at[known], nearcopy.SELF_SHIFTS.index((0, 0))]
    if (~known).any():
        whole[~known] = nearcopy.whole_keys(thumbs[~known], [(0, 0)])[:, 0]
    homes = np.full(len(ids), -1, np.int32)  # the list each remembered image was stored in; the new ones are assigned
    if memo.homes is not None:
        homes[known] = memo.homes[at[known]]
    index = nearcopy.CandidateIndex(thumbs, ids, trained=memo.trained, whole=whole, homes=homes)
    return index, neighbourhood.update(index, thumbs, memo), int((~known).sum()), True


def _self_test(root, names, reps, index, thumbs, sizes, neighbours, threshold, seed, keys) -> calibration.SelfTest:
    "Plant copies of a seeded sample of the representatives (chosen by content hash, so file order does not matter)."
    order = np.argsort(keys.to_numpy()[reps], kind="stable")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(order, size=min(calibration.SAMPLE, len(reps)), replace=False))
    images = []
    for row in sample:
        with Image.open(os.path.join(str(root), names.iat[reps[row]])) as img:
            img.load()
            images.append(_to_standard_mode(img)[0])
    return calibration.self_test(images, sample, index, thumbs, sizes, neighbours, threshold, seed)


def stable_cluster_ids(components: np.ndarray, keys: pd.Series) -> pd.Series:
    "Name each multi-item cluster after its smallest member key ('dup:<12 hex>'), so names survive re-runs; '' if alone."
    frame = pd.DataFrame({"c": components, "k": keys.values})
    smallest = frame.groupby("c").k.transform("min")
    size = frame.groupby("c").k.transform("size")
    return pd.Series(np.where(size > 1, "dup:" + smallest.str[:12], ""), index=keys.index)
