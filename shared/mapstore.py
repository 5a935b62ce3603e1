"""A portable map store: sharded safetensors files indexed by cache key.

Written by `lfi maps --export`, read by a student that trains without the
teacher running. Layout: `index.json` (keys -> shard, images -> keys, model, the keys
the teacher flagged degenerate) and `maps-00000.safetensors`, ... each holding float16
maps named by key. Image paths are relative to the dataset root (what the student's
`Sample.rel` is), or to the split folder `lfi maps` was pointed at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX = "index.json"


class MapStoreWriter:
    def __init__(self, folder: str | Path, *, shard_size: int = 4096, model: dict | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.model = model
        self._pending: dict[str, np.ndarray] = {}
        self.keys: dict[str, str] = {}  # key -> shard file
        self.images: dict[str, str] = {}  # image path (relative) -> key
        self.degenerate: set[str] = set()  # keys whose map the teacher flagged degenerate (a uniform fallback)
        self._shards = 0

    def add(self, key: str, values: np.ndarray, image: str | None = None, *, degenerate: bool = False) -> None:
        if image is not None:
            self.images[image] = key
        if degenerate:
            self.degenerate.add(key)
        if key in self.keys or key in self._pending:
            return
        self._pending[key] = np.ascontiguousarray(values, dtype=np.float16)
        if len(self._pending) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = f"maps-{self._shards:05d}.safetensors"
        save_file(self._pending, str(self.folder / name))
        self.keys.update(dict.fromkeys(self._pending, name))
        self._pending = {}
        self._shards += 1

    def close(self) -> Path:
        self._flush()
        index = {"format": "lfi-mapstore", "version": 2, "model": self.model, "keys": self.keys,
                 "images": self.images, "degenerate": sorted(self.degenerate)}
        (self.folder / INDEX).write_text(json.dumps(index, indent=1, sort_keys=True))
        return self.folder


class MapStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        if not index_path.exists():
            raise FileNotFoundError(f"{self.folder} is not a map store (no {INDEX}); make one with lfi maps --export")
        index = json.loads(index_path.read_text())
        if index.get("format") != "lfi-mapstore":
            raise ValueError(f"{index_path} is not an lfi map store index")
        self.model = index.get("model")
        self.keys: dict[str, str] = index["keys"]
        self.images: dict[str, str] = index["images"]
        # version 1 stores did not record it: their degenerate maps read as the uniform maps they hold
        self.degenerate: set[str] = set(index.get("degenerate", []))
        self._open: dict[str, object] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def get(self, key: str) -> np.ndarray | None:
        shard = self.keys.get(key)
        if shard is None:
            return None
        handle = self._open.get(shard)
        if handle is None:
            handle = self._open[shard] = safe_open(str(self.folder / shard), framework="numpy")
        return handle.get_tensor(key).astype(np.float32)

    def for_image(self, relative_path: str) -> np.ndarray | None:
        key = self.images.get(relative_path)
        return None if key is None else self.get(key)
