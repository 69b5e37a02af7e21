"""How the audit's cost grows with the collection, and what an incremental re-run costs (`make bench --only audit`).

The images are generated once into a cache folder and reused: image n is a pure function of n (a digit on a smooth
random field; every tenth a noisy copy of an earlier one), so the 20k collection is the first 20k of the 80k one,
and so on. Each audit runs in its own process, so its peak memory (the process and its workers) is its own.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

CACHE = Path(tempfile.gettempdir()) / "stagebook-bench-audit-images"
SIDE = 32


def _digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.images, digits.target


def pixels(n: int, digits=None) -> np.ndarray:
    "Image n (uint8, 32x32): a digit on a smooth field, or for n % 10 == 9 a noisy copy of an earlier image."
    from PIL import Image

    images, _ = digits or _digits()
    rng = np.random.default_rng(n)
    if n % 10 == 9:
        m = int(rng.integers(0, n))
        m -= m % 10 == 9
        return np.clip(pixels(m, digits).astype(float) + rng.normal(0, 6, (SIDE, SIDE)), 0, 255).astype(np.uint8)
    canvas = np.asarray(Image.fromarray((rng.random((4, 4)) * 120).astype(np.uint8)).resize((SIDE, SIDE), Image.BICUBIC), float)
    dy, dx = rng.integers(0, 17, 2)
    canvas[dy:dy + 16, dx:dx + 16] += np.kron(images[n % len(images)] * 8, np.ones((2, 2)))
    return np.clip(canvas, 0, 255).astype(np.uint8)


def path_of(n: int, targets) -> str:
    return f"imgs/{targets[n % len(targets)]}/{n:06d}.png"


def _write(span: tuple[int, int]) -> None:
    from PIL import Image

    digits = _digits()
    for n in range(*span):
        dest = CACHE / path_of(n, digits[1])
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels(n, digits), "L").save(dest)


def generate(count: int) -> Path:
    "The first `count` images in the cache folder (written once, in parallel)."
    marker = CACHE / f".complete-{count}"
    if not marker.exists():
        print(f"bench: writing {count} generated {SIDE}x{SIDE} images to {CACHE} (once) ...", flush=True)
        spans = [(s, min(s + 5000, count)) for s in range(0, count, 5000)]
        with get_context("fork").Pool(os.cpu_count() or 1) as pool:
            pool.map(_write, spans)
        marker.write_text("")
    return CACHE


def manifest(count: int, start: int = 0):
    "The manifest of images start..count (path relative to the cache folder, label)."
    import pandas as pd
    targets = _digits()[1]
    rows = [(path_of(n, targets), str(targets[n % len(targets)])) for n in range(start, count)]
    return pd.DataFrame({"path": [p for p, _ in rows], "label": [lab for _, lab in rows], "group": "", "source": "",
                         "annotator": ""})


# What one measured audit runs, in a process of its own: python audit_scale.py measure COUNT [CACHE_DIR [PAIRS_FILE]]
def _measure(count: int, cache: str | None, pairs_file: str | None = None) -> None:
    import resource

    import faiss  # noqa: F401  (imported before the clock starts: stage 01's kernel has them loaded already)
    import torch  # noqa: F401

    from stagebook.audit import audit

    items = manifest(count)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = audit(items, CACHE, near_threshold="auto", progress=False, cache=Path(cache) if cache else None)
    seconds = time.perf_counter() - start
    summary = result.summary(5)
    out = {"count": count, "seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "import_mib": base / 1024, "worker_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
           "table_bytes": int(result.items.memory_usage(deep=True).sum()),
           "pairs": summary["near_duplicate_pairs"], "clusters": summary["duplicate_clusters"],
           "recall": summary.get("self_test_recall"), "fingerprint": _fingerprint(result), "reuse": result.reuse,
           "steps": {k: round(v, 1) for k, v in (result.seconds or {}).items()},
           "peak_by_step": {k: round(v - base / 1024) for k, v in (result.peak_mib or {}).items()}}
    if pairs_file:  # the near pairs by path, to count how two audits differ
        paths = result.items.path.to_numpy()
        Path(pairs_file).write_text("\n".join(sorted(f"{paths[i]} {paths[j]}" for i, j in
                                                     result.near_pairs[["i", "j"]].to_numpy())))
    print("RESULT " + json.dumps(out), flush=True)


def _fingerprint(result) -> str:
    "A hash of everything the audit decided, to compare a full and an incremental audit."
    import hashlib
    cols = ["path", "sha256", "status", "converted", "width", "height", "pixel_sha256", "colour", "cluster", "near_unit"]
    text = result.items[cols].to_csv(index=False) + result.near_pairs.round(6).to_csv(index=False)
    if result.self_test:
        text += json.dumps(result.self_test.numbers(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measure(count: int, cache: Path | None = None, pairs_file: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, __file__, "measure", str(count), str(cache or ""), str(pairs_file or "")],
                          capture_output=True, text=True, env=env)
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not line:
        raise RuntimeError(f"audit of {count} images failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(line[-1][len("RESULT "):])


def plain_decode(count: int) -> float:
    "The bare baseline: one process opening and decoding the same files, nothing else."
    from PIL import Image
    paths = [CACHE / p for p in manifest(count).path]
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as img:
            img.load()
    return time.perf_counter() - start


def bench_audit_scale(sizes=(20_000, 80_000, 320_000)) -> list[dict]:
    """Audit time and peak memory at each size, the fitted growth exponent, and an incremental re-run after +10%
    images at the largest size against a full audit of the same files (and their results compared)."""
    import shutil

    generate(max(sizes))
    rows = []
    full_pairs = Path(tempfile.mkdtemp(prefix="stagebook-bench-audit-pairs-")) / "full.txt"
    for count in sizes:
        plain = plain_decode(count)
        print(f"bench: auditing {count} images ...", flush=True)
        rows.append({**measure(count, None, full_pairs if count == sizes[-1] else None), "plain": plain})
    n = np.array([r["count"] for r in rows], float)
    t = np.array([r["seconds"] for r in rows])
    exponent = float(np.polyfit(np.log(n), np.log(t), 1)[0])
    # Peak memory (after imports) against images: the slope is what each more image costs at the peak, to set
    # beside the near-copy index's own state per image (32-px thumbnail, 8-px key, the IVF's copy of it and its id).
    per_image_kb = float(np.polyfit(n, [r["peak_mib"] - r["import_mib"] for r in rows], 1)[0]) * 1024
    from stagebook.nearcopy import THUMB
    # uint8 thumbnail; the 6x6 key as bytes, as float32 and in the IVF; int64 id; the probe tables (57 rows and
    # distances, 13 x 3 list numbers, 13 moved keys as bytes: `neighbourhood.Tables`)
    index_kb = (THUMB * THUMB + 36 + 2 * 36 * 4 + 8 + 57 * 8 + 13 * 3 * 4 + 13 * 36) / 1024
    # the item table the audit returns (one row per file: path, label, hashes, sizes, clusters), as pandas holds it
    table_kb = float(np.polyfit(n, [r["table_bytes"] for r in rows], 1)[0]) / 1024
    largest = sizes[-1]
    cache = Path(tempfile.mkdtemp(prefix="stagebook-bench-audit-cache-"))
    lists_only = Path(tempfile.mkdtemp(prefix="stagebook-bench-audit-lists-"))
    try:
        print(f"bench: incremental: {int(largest * 10 / 11)} images with a cache, then all {largest} ...", flush=True)
        measure(int(largest * 10 / 11), cache)
        _keep_lists_only(cache, lists_only)
        incremental = measure(largest, cache, lists_only / "incremental.txt")
        print(f"bench: a full audit of {largest} over the same trained lists, nothing else remembered ...", flush=True)
        same_lists = measure(largest, lists_only, lists_only / "same_lists.txt")
        differ = _pairs_differ(lists_only / "incremental.txt", full_pairs)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(lists_only, ignore_errors=True)
        shutil.rmtree(full_pairs.parent, ignore_errors=True)
    full = rows[-1]
    print(f"\n{'images':>8} {'audit s':>9} {'img/s':>8} {'plain decode s':>15} {'peak MiB':>9} {'(after imports)':>16}"
          f" {'workers MiB':>12} {'near pairs':>11}")
    for r in rows:
        print(f"{r['count']:>8} {r['seconds']:>9.1f} {r['count'] / r['seconds']:>8.0f} {r['plain']:>15.1f}"
              f" {r['peak_mib']:>9.0f} {r['peak_mib'] - r['import_mib']:>16.0f} {r['worker_peak_mib']:>12.0f} {r['pairs']:>11}")
    for r in rows + [incremental]:
        print(f"  steps at {r['count']}{' (incremental)' if r is incremental else ''}: {r['steps']}"
              f"; peak MiB after imports at the end of each: {r['peak_by_step']}")
    held_kb = index_kb + table_kb
    print(f"peak memory grows by {per_image_kb:.2f} KB per image (fit over {', '.join(str(c) for c in sizes)});"
          f" the index's own state is {index_kb:.2f} KB per image and the item table the audit returns"
          f" {table_kb:.2f} KB: {held_kb:.2f} KB  target: nothing else grows (decoded images, candidate pairs)"
          f"  {'ok' if per_image_kb <= held_kb else 'OVER TARGET'}")
    print(f"incremental peak after imports at {largest}: {incremental['peak_mib'] - incremental['import_mib']:.0f} MiB"
          f" against {full['peak_mib'] - full['import_mib']:.0f} MiB for the full audit (it holds the cache's tables too)")
    same = incremental["fingerprint"] == same_lists["fingerprint"]
    ratio = incremental["seconds"] / same_lists["seconds"]
    print(f"  steps of the full audit over the same lists: {same_lists['steps']}")
    print(f"incremental vs the cache-less full audit ({full['seconds']:.1f} s, lists trained on all {largest}):"
          f" {incremental['seconds'] / full['seconds']:.3f}; near pairs found by the incremental only: {differ[0]}, by"
          f" the cache-less only: {differ[1]}, by both: {differ[2]}")
    print(f"growth exponent (log time vs log images): {exponent:.2f}  target <= 1.1  {'ok' if exponent <= 1.1 else 'OVER TARGET'}")
    print(f"{largest} images: {full['seconds']:.0f} s  target < 240 s  {'ok' if full['seconds'] < 240 else 'OVER TARGET'}")
    print(f"incremental after +10%: {incremental['seconds']:.1f} s vs a full audit over the same lists"
          f" {same_lists['seconds']:.1f} s = {ratio:.3f}  target <= 0.25  {'ok' if ratio <= 0.25 else 'OVER TARGET'};"
          f" result identical to that full audit: {same}  ({incremental['reuse']})")
    return [{"name": "audit growth exponent", "ours_s": exponent, "baseline_s": 1.1, "ratio": exponent / 1.1,
             "target": 1.0, "ok": exponent <= 1.1},
            {"name": f"audit {largest} images (s)", "ours_s": full["seconds"], "baseline_s": 240.0,
             "ratio": full["seconds"] / 240, "target": 1.0, "ok": full["seconds"] < 240},
            {"name": "audit peak memory per image (KB) vs index + item table", "ours_s": per_image_kb,
             "baseline_s": held_kb, "ratio": per_image_kb / held_kb, "target": 1.0, "ok": per_image_kb <= held_kb},
            {"name": "incremental audit vs full (same lists)", "ours_s": incremental["seconds"],
             "baseline_s": same_lists["seconds"], "ratio": ratio, "target": 0.25, "ok": ratio <= 0.25 and same}]


def _keep_lists_only(cache: Path, into: Path) -> None:
    "A cache holding only the coarse lists trained by the audit that made `cache` (what a full audit over them needs)."
    from stagebook import auditcache
    tables = auditcache.load_neighbours(cache)
    if tables is None:
        return
    for name in ("ids", "rows", "squared", "lists", "moved", "homes"):
        if getattr(tables, name) is not None:
            setattr(tables, name, getattr(tables, name)[:0])
    auditcache.save_neighbours(into, tables)


def _pairs_differ(a: Path, b: Path) -> tuple[int, int, int]:
    "Near pairs only in a, only in b, and in both."
    left, right = set(a.read_text().splitlines()), set(b.read_text().splitlines())
    return len(left - right), len(right - left), len(left & right)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "measure":
    _measure(int(sys.argv[2]), sys.argv[3] or None, (sys.argv[4] if len(sys.argv) > 4 else "") or None)
