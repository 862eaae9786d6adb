"""ImageCache: decoded, grayscale, resized uint8 images stored once on disk, memory-mapped.

One cache entry per (list of images, size): `<key>.npy` (N x S x S uint8) and `<key>.json`
(file identities and per-image info). On load, each file's identity (size, mtime) is compared
with the stored one: all equal is a hit; changed files are re-decoded (stale); an unreadable
or inconsistent entry is rebuilt (damaged). Writes go to a temporary file, then a rename, so an
interrupted build never leaves a half-written entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ImageReadError
from .images import H5_SEP, read_image

CACHE_VERSION = 1
INFO_COLUMNS = ["width", "height", "mode", "sha1", "error"]


def default_cache_dir() -> Path:
    base = os.environ.get("CXRLAB_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cxrlab"
    return Path(base)


def file_identity(ref: str) -> list[int]:
    """(size, mtime_ns) of the file behind an image reference; [-1, -1] when it is missing."""
    path = ref.rsplit(H5_SEP, 1)[0] if H5_SEP in ref else ref
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


@dataclass
class CachedImages:
    """`images` is a read-only memory map (N x S x S uint8); `info` has one row per image
    (original width, height, mode, sha1 of the file, and error text for images that failed)."""

    images: np.ndarray
    info: pd.DataFrame
    status: str  # hit | miss | stale | damaged
    path: Path

    @property
    def errors(self) -> pd.Series:
        return self.info["error"][self.info["error"] != ""]


def _decode_rows(npy_path: str, refs: list[str], rows: list[int], size: int) -> list[tuple]:
    """Worker: decode `rows` straight into the shared .npy (no pixel copies between processes),
    written with pwrite: a memory map would keep every written page in the worker's resident set."""
    offset = np.load(npy_path, mmap_mode="r").offset
    results = []
    fd = os.open(npy_path, os.O_WRONLY)
    try:
        for row, ref in zip(rows, refs):
            try:
                arr, info = read_image(ref, size)
                results.append((row, info.width, info.height, info.mode, info.sha1, ""))
            except ImageReadError as exc:
                arr = np.zeros((size, size), np.uint8)
                results.append((row, 0, 0, "", "", exc.reason))
            os.pwrite(fd, arr.tobytes(), offset + row * size * size)
    finally:
        os.close(fd)
    return results


class ImageCache:
    def __init__(self, root: str | Path | None = None, workers: int | None = None):
        self.root = Path(root) if root else default_cache_dir()
        self.workers = workers or os.cpu_count() or 1

    def key(self, refs: list[str], size: int) -> str:
        digest = hashlib.sha256(json.dumps([CACHE_VERSION, size, refs]).encode()).hexdigest()
        return digest[:24]

    def load(self, refs: list[str], size: int, progress=None) -> CachedImages:
        """Images for `refs` at `size`, from the cache when valid, decoding only what is needed.
        `progress(done, total)` is called while decoding."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = self.key(list(refs), size)
        npy, meta_path = self.root / f"{key}.npy", self.root / f"{key}.json"
        identities = [file_identity(r) for r in refs]
        meta, images = self._open(npy, meta_path, len(refs), size)
        if meta is None:
            status = "damaged" if (npy.exists() or meta_path.exists()) else "miss"
            todo = list(range(len(refs)))
            info = pd.DataFrame([[0, 0, "", "", ""]] * len(refs), columns=INFO_COLUMNS)
        else:
            todo = [i for i, (a, b) in enumerate(zip(identities, meta["identities"])) if a != b]
            info = pd.DataFrame(meta["info"], columns=INFO_COLUMNS)
            status = "stale" if todo else "hit"
            if not todo:
                return CachedImages(images, info, status, npy)
        tmp = npy.with_suffix(f".npy.tmp{os.getpid()}")
        if status == "stale":
            shutil.copyfile(npy, tmp)  # keep the rows that are still valid
        else:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(refs), size, size)).flush()
        try:
            for row, w, h, mode, sha, err in self._decode(tmp, refs, todo, size, progress):
                info.iloc[row] = [w, h, mode, sha, err]
            os.replace(tmp, npy)
        finally:
            tmp.unlink(missing_ok=True)
        st = npy.stat()
        meta = {"version": CACHE_VERSION, "size": size, "refs": list(refs), "identities": identities,
                "npy": [st.st_size, st.st_mtime_ns], "info": info.values.tolist()}
        tmp_meta = meta_path.with_suffix(f".json.tmp{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_path)
        return CachedImages(np.load(npy, mmap_mode="r"), info, status, npy)

    def _open(self, npy: Path, meta_path: Path, n: int, size: int):
        """(meta, memmap) of a consistent entry, or (None, None)."""
        try:
            meta = json.loads(meta_path.read_text())
            st = npy.stat()
            images = np.load(npy, mmap_mode="r")
        except (OSError, ValueError):
            return None, None
        ok = (meta.get("version") == CACHE_VERSION and meta.get("npy") == [st.st_size, st.st_mtime_ns]
              and images.shape == (n, size, size) and images.dtype == np.uint8
              and len(meta.get("identities", [])) == n and len(meta.get("info", [])) == n)
        return (meta, images) if ok else (None, None)

    def _decode(self, npy: Path, refs: list[str], todo: list[int], size: int, progress):
        total, done = len(todo), 0
        if self.workers <= 1 or total < 64:
            for start in range(0, total, 16):
                rows = todo[start:start + 16]
                yield from _decode_rows(str(npy), [refs[r] for r in rows], rows, size)
                done += len(rows)
                if progress:
                    progress(done, total)
            return
        chunk = max(8, min(64, total // (self.workers * 8)))
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx) as pool:
            futures = [pool.submit(_decode_rows, str(npy), [refs[r] for r in todo[i:i + chunk]],
                                   todo[i:i + chunk], size) for i in range(0, total, chunk)]
            for fut in as_completed(futures):
                results = fut.result()
                yield from results
                done += len(results)
                if progress:
                    progress(done, total)
