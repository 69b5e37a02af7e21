"""What an audit remembers between runs, so a re-run costs about the new images, with the same result.

Four tables in one folder (stage 01 keeps it in `data/audit_cache/`, a persistent DVC output):
- per file, keyed by its sha256: status, conversion, size, pixel hash, colour and the 32-px thumbnail, i.e.
  everything decoding found. A changed file has a new sha256 and is decoded again; a file that is gone is simply
  not asked for, and drops out of the cache at the next compaction.
- per file path, size and modification time: the sha256 it had, so an unchanged file is not even read again (git's
  and DVC's assumption: a file rewritten keeps neither its time nor, mostly, its size). Only files that were last
  changed well before the audit began are kept (`SETTLED_NS`), so a file changed while it was being read, or just
  after within the clock's resolution, is read again next time.
- per image (by the first 60 bits of its pixel hash): its candidate neighbours, per move of it, with the coarse
  lists of the index they were searched in (`stagebook.neighbourhood`): a re-run searches only what changed and
  gets the tables a search from scratch over those lists gets.
- per verified candidate pair, keyed by both pixel hashes and the verification's gate: the distance. Verification is
  a pure function of those (it starts from the pair's own best offset, `nearcopy.best_offsets`, not from whichever
  probe found the pair), so a remembered distance is the one a full audit computes, in any collection.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import StagebookError
from .iorw import atomic_write_with

FILES = "files-{:04d}.npz"
STATS = "stats-v1.npz"    # (path, size, mtime) -> sha256
PAIRS = "pairs-v5.npz"    # v5: tone matching (v4: whole-number keys; v3: blur matching, quarter pixels, a blurred second look)
NEIGHBOURS = "neighbours-v1.npz"  # every image's candidate neighbours (`stagebook.neighbourhood`)
MAX_SHARDS = 8            # more shards than this, or a quarter of the entries stale: rewrite as one
SETTLED_NS = 2_000_000_000  # a file changed less than 2 s before an audit began is read again by the next one
FIELDS = ("status", "converted", "width", "height", "pixel_sha256", "colour")


def _save(path: Path, **arrays) -> None:
    "Straight to a temp file, then renamed (a bytes buffer first copied hundreds of MB twice at 320k images)."
    atomic_write_with(path, lambda out: np.savez(out, **arrays))


def check_folder(folder: Path) -> Path:
    """The cache folder, refused in one line before any work when it could not be written at the end: a path that
    is a file, or one under a file or a folder this process may not write."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StagebookError(f"{folder}: the audit cache must be a folder, and this is a file; give a folder path"
                             " (it is created if missing), e.g. --cache data/audit_cache")
    parent = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise StagebookError(f"{folder}: cannot make the audit cache under {parent}, which is a file; give a folder"
                             " path, e.g. --cache data/audit_cache")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StagebookError(f"{folder}: cannot write the audit cache in {parent} (no permission); give a folder you"
                             " can write, e.g. --cache data/audit_cache")
    return folder


def stat_keys(paths: list[str], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per file (its path on disk, and its manifest path `names`): a 64-bit key of (manifest path, size, mtime in ns)
    and the mtime; (0, -1) where it cannot be stat'ed. The manifest path, not the disk path, so the data folder may
    move."""
    import hashlib

    key, mtime = np.zeros(len(paths), np.uint64), np.full(len(paths), -1, np.int64)
    for at, (path, name) in enumerate(zip(paths, names)):
        try:
            st = os.stat(path)
        except OSError:
            continue
        text = f"{name}\0{st.st_size}\0{st.st_mtime_ns}".encode()
        key[at] = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") or 1
        mtime[at] = st.st_mtime_ns
    return key, mtime


class FileCache:
    "Per-file inspection results by sha256, in append-only shards; and which sha256 each unchanged file had."

    def __init__(self, folder: Path):
        self.folder = check_folder(folder)
        self.shards = sorted(self.folder.glob("files-*.npz"))
        self.tables, self.sources = [], []
        for shard in self.shards:
            try:
                with np.load(shard, allow_pickle=False) as data:
                    self.tables.append({k: data[k] for k in data.files})
                    self.sources.append(shard)
            except (OSError, ValueError, KeyError):  # a damaged shard is only a lost speed-up: decode those again
                continue
        self.where = {sha: (t, row) for t, table in enumerate(self.tables) for row, sha in enumerate(table["sha256"])}
        self.stored = len(self.where)
        for table in self.tables:  # held as compactly as they can be: the hashes are in `where`, pixel hashes are hex
            del table["sha256"]
            if table["pixel_sha256"].dtype.kind == "U":
                table["pixel_sha256"] = table["pixel_sha256"].astype("S64")  # 64 bytes each, not 256
        self.stat_key, self.stat_sha = np.empty(0, np.uint64), np.empty((0, 32), np.uint8)
        try:
            with np.load(self.folder / STATS, allow_pickle=False) as data:
                key, sha = data["key"], data["sha256"]
            if key.dtype == np.uint64 and sha.dtype == np.uint8 and sha.shape == (len(key), 32):
                self.stat_key, self.stat_sha = key, sha
        except (OSError, ValueError, KeyError):  # none yet, or damaged: those files are read again
            pass

    def recall(self, keys: np.ndarray) -> np.ndarray:
        """Per stat key (`stat_keys`), the sha256 its file had when last audited, if it is unchanged and cached; else
        None (an object array)."""
        out = np.full(len(keys), None, object)
        if not len(self.stat_key) or not len(keys):
            return out
        at = np.clip(np.searchsorted(self.stat_key, keys), 0, len(self.stat_key) - 1)
        hit = np.flatnonzero((self.stat_key[at] == keys) & (keys != 0))
        text = self.stat_sha[at[hit]].tobytes().hex()  # one conversion, then 64 hex digits each
        shas = [text[64 * q:64 * q + 64] for q in range(len(hit))]
        cached = np.array([sha in self.where for sha in shas], bool)
        out[hit[cached]] = np.array(shas, object)[cached] if len(shas) else []
        return out

    def take(self, shas: list[str], into: np.ndarray, at: np.ndarray) -> dict[str, np.ndarray]:
        """Fields (object arrays of the Python values `get` gives) of these cached files, in the order given, and
        their thumbnails written into the caller's array (`into[at[q]]` for shas[q], not a copy): gathered
        table by table, with no loop over files but the lookup. The cache then lets go of its own thumbnails (1 KB
        a file); `get` reads them again if it is asked."""
        where = np.array([self.where[sha] for sha in shas], np.int64).reshape(-1, 2)
        fields = {k: np.empty(len(shas), object) for k in FIELDS}
        for t, table in enumerate(self.tables):
            mine = np.flatnonzero(where[:, 0] == t)
            if len(mine):
                rows = where[mine, 1]
                into[at[mine]] = self._thumbs(t)[rows]
                for k in FIELDS:
                    fields[k][mine] = _python(table[k][rows])  # numpy strings and numbers become Python ones here
            table.pop("thumb", None)
        return fields

    def _thumbs(self, t: int) -> np.ndarray:
        "Table t's thumbnails, read again from its shard if `take` let go of them."
        table = self.tables[t]
        if "thumb" not in table:
            with np.load(self.sources[t], allow_pickle=False) as data:
                table["thumb"] = data["thumb"]
        return table["thumb"]

    def __contains__(self, sha: str) -> bool:
        return sha in self.where

    def known(self) -> frozenset[str]:
        return frozenset(self.where)

    def get(self, sha: str) -> tuple[dict, np.ndarray]:
        t, row = self.where[sha]
        table = self.tables[t]
        return {k: _python(table[k][row:row + 1])[0] for k in FIELDS}, self._thumbs(t)[row]

    def write(self, new: list, current: set[str], stats: tuple | None = None) -> None:
        """Store the newly inspected files (`Inspection`s); compact into one shard when there are many shards or
        many entries for files no longer in the collection (`current`: the sha256s audited this time). `stats`:
        (stat keys, mtimes, sha256s, when the audit began in ns) of this audit's files, kept for those that had
        settled by then."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if stats is not None:
            self._write_stats(*stats)
        stale = sum(1 for sha in self.where if sha not in current)
        compact = len(self.shards) + 1 > MAX_SHARDS or stale > 0.25 * max(1, self.stored)
        rows = list({f.sha256: _row(f) for f in reversed(new)}.values())  # one row per content
        if compact:
            rows += [(sha, *self.get(sha)) for sha in sorted(self.where) if sha in current]
        if not rows:
            return
        number = 0 if compact else (int(self.shards[-1].stem.split("-")[1]) + 1 if self.shards else 0)
        target = self.folder / FILES.format(number)
        _save(target, sha256=np.array([r[0] for r in rows], "U64"),
              thumb=np.stack([r[2] for r in rows]).astype(np.uint8),
              **{k: np.array([r[1][k] for r in rows]) for k in FIELDS})
        if compact:
            for shard in self.shards:
                if shard != target:
                    shard.unlink(missing_ok=True)

    def _write_stats(self, keys: np.ndarray, mtimes: np.ndarray, shas: list[str], began_ns: int) -> None:
        "The stat table of this audit's files that had settled when it began (it replaces the last one: gone files go)."
        settled = np.flatnonzero((keys != 0) & (mtimes >= 0) & (mtimes < began_ns - SETTLED_NS))
        keys, first = np.unique(keys[settled], return_index=True)
        _save(self.folder / STATS, key=keys,
              sha256=np.frombuffer(b"".join(bytes.fromhex(shas[settled[f]]) for f in first), np.uint8).reshape(-1, 32))


def _python(values: np.ndarray) -> list:
    "Python values of a cached column (hex pixel hashes are held as bytes: str again)."
    return values.astype(str).tolist() if values.dtype.kind == "S" else values.tolist()


def _row(found) -> tuple[str, dict, np.ndarray]:
    thumb = found.thumb if found.thumb is not None else np.zeros((32, 32), np.uint8)
    return found.sha256, {k: getattr(found, k) for k in FIELDS}, thumb


def _hash64(hexes: np.ndarray) -> np.ndarray:
    "The first 16 hex digits of each hash as an unsigned 64-bit number."
    return np.array([int(h[:16], 16) for h in hexes], dtype=np.uint64)


class PairMemo:
    """Verified distances of candidate pairs by (pixel hash a, pixel hash b, gate). `pixel_keys` are the pixel
    hashes of the rows the near-copy search numbers."""

    def __init__(self, folder: Path, pixel_keys: np.ndarray):
        self.path = Path(folder) / PAIRS
        self.ids = _hash64(pixel_keys)
        self.known_keys, self.known_dist = np.empty(0, np.uint64), np.empty(0, np.float32)
        if self.path.exists():
            try:
                with np.load(self.path, allow_pickle=False) as data:
                    self.known_keys, self.known_dist = data["key"], data["distance"]
            except (OSError, ValueError, KeyError):
                pass
        self.used_keys, self.used_dist = [], []
        self.remembered = self.verified = 0

    def _keys(self, i, j, gate: float) -> np.ndarray:
        with np.errstate(over="ignore"):
            key = self.ids[i] * np.uint64(0x9E3779B97F4A7C15) ^ self.ids[j]
            key ^= np.uint64(np.float32(gate).view(np.uint32)) << np.uint64(24)
            return key * np.uint64(0xBF58476D1CE4E5B9)

    def lookup(self, i, j, gate: float) -> np.ndarray:
        "Remembered distances (NaN where not known)."
        keys = self._keys(i, j, gate)
        out = np.full(len(keys), np.nan, np.float32)
        if len(self.known_keys):
            order = np.argsort(keys)  # sorted needles: searchsorted walks the table in order (2x faster at 3M pairs)
            at = np.clip(np.searchsorted(self.known_keys, keys[order]), 0, len(self.known_keys) - 1)
            hit = self.known_keys[at] == keys[order]
            out[order[hit]] = self.known_dist[at[hit]]
        self.remembered += int((~np.isnan(out)).sum())
        self.verified += int(np.isnan(out).sum())
        return out

    def record(self, i, j, gate: float, distance: np.ndarray) -> None:
        self.used_keys.append(self._keys(i, j, gate))
        self.used_dist.append(distance.astype(np.float32))

    def write(self) -> None:
        "Keep exactly the pairs this audit used (a pair no longer searched is no longer remembered)."
        if not self.used_keys:
            return
        keys, dist = np.concatenate(self.used_keys), np.concatenate(self.used_dist)
        keys, first = np.unique(keys, return_index=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _save(self.path, key=keys, distance=dist[first])
        for old in self.path.parent.glob("pairs-v*.npz"):  # an earlier version's distances are no use any more
            if old.name != self.path.name:
                old.unlink(missing_ok=True)



def load_neighbours(folder: Path):
    "The candidate tables the last audit left (`neighbourhood.Tables`), or None (none yet, or damaged)."
    from .neighbourhood import Tables
    try:
        with np.load(Path(folder) / NEIGHBOURS, allow_pickle=False) as data:
            squared = data["squared"].astype(np.float32)
            squared[data["squared"] == NO_DISTANCE] = np.inf
            trained = data["trained"].tobytes() or None
            homes = data["homes"].astype(np.int32) if "homes" in data.files else None  # none in older caches
            tables = Tables(data["ids"], data["rows"], squared, data["lists"].astype(np.int32), data["moved"],
                            int(data["k"]), trained, int(data["trained_size"]), homes)
    except (OSError, ValueError, KeyError):
        return None
    n = len(tables.ids)
    if tables.rows.shape[0] != n or tables.lists.shape[0] != n or tables.moved.shape[0] != n:
        return None
    if tables.homes is not None and tables.homes.shape != (n,):
        tables.homes = None  # damaged: the lists are assigned again, which costs only time (a home that is no list
                             # of the index is assigned again by `CandidateIndex`, which alone knows the lists)
    if tables.rows.size and not (-1 <= tables.rows.min() and tables.rows.max() < n):
        return None
    if n > 1 and not (np.diff(tables.ids) > 0).all():
        return None
    return tables


NO_DISTANCE = np.iinfo(np.uint16).max  # on disk, squared distances within the gate are below 2^16


def save_neighbours(folder: Path, tables) -> None:
    "Keep this audit's candidate tables for the next (distances and list numbers in 16 bits on disk)."
    squared = np.where(np.isfinite(tables.squared), tables.squared, NO_DISTANCE).astype(np.uint16)
    small = tables.lists.max(initial=0) < NO_DISTANCE
    lists = tables.lists.astype(np.uint16 if small else np.int32)
    homes = {} if tables.homes is None else {"homes": tables.homes.astype(np.uint16 if small else np.int32)}
    Path(folder).mkdir(parents=True, exist_ok=True)
    _save(Path(folder) / NEIGHBOURS, **homes, ids=tables.ids, rows=tables.rows, squared=squared, lists=lists,
          moved=tables.moved, k=np.int64(tables.k), trained_size=np.int64(tables.trained_size),
          trained=np.frombuffer(tables.trained or b"", np.uint8))
