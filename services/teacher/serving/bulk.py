"""`lfi maps DATASET`: precompute maps for an image folder through the teacher, at bulk priority.

Resumable by construction: every image's key is computed locally and looked up
first (key-only batch items), so a rerun only sends what the cache lacks.
`--export` then writes a portable map store a student can train from offline.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from shared.codec import decode_map
from shared.errors import LfiError
from shared.images import decode_image
from shared.mapstore import MapStoreWriter
from shared.teacher_client import TeacherClient, encode_image

log = logging.getLogger("lfi.maps")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class BulkReport:
    images: int = 0
    cached: int = 0
    computed: int = 0
    unreadable: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    exported: int = 0


@dataclass
class BulkOptions:
    task: str = "classification"
    label_from_folder: bool = True
    vocabulary: list[str] | None = None
    prompt: str | None = None
    grid: tuple[int, int] | None = None
    batch_size: int = 32


def find_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def precompute(client: TeacherClient, root: Path, options: BulkOptions, *, export: Path | None = None,
               progress: Callable[[int], None] | None = None) -> BulkReport:
    report = BulkReport()
    paths = find_images(root)
    report.images = len(paths)
    keys: dict[str, str] = {}  # relative path -> key
    for chunk in _chunks(paths, options.batch_size):
        items, rels = [], []
        for path in chunk:
            rel = path.relative_to(root).as_posix()
            try:
                image = decode_image(path.read_bytes())
            except (LfiError, OSError) as exc:
                report.unreadable.append(rel)
                log.warning("skipping %s: %s", rel, exc)
                continue
            grid = list(options.grid) if options.grid else None
            request = {"task": options.task, "prompt": options.prompt, "grid": grid}
            label = path.parent.name if options.label_from_folder and path.parent != root else None
            if label is not None:
                request["label"] = label
            elif options.vocabulary:
                request["vocabulary"] = options.vocabulary
            key = client.key_for(image, task=options.task, label=request.get("label"),
                                 vocabulary=request.get("vocabulary"), prompt=options.prompt, grid=options.grid)
            keys[rel] = key
            items.append((key, request, image))
            rels.append(rel)
        found = client.batch([{"key": key} for key, _, _ in items]) if items else []
        missing = [(rel, item) for rel, item, answer in zip(rels, items, found, strict=True) if "error" in answer]
        report.cached += len(items) - len(missing)
        if missing:
            bodies = [{**{k: v for k, v in request.items() if v is not None}, "image": encode_image(image),
                       "priority": "bulk"} for _, (_, request, image) in missing]
            for (rel, (key, _, _)), answer in zip(missing, client.batch(bodies), strict=True):
                if "error" in answer:
                    report.failed[rel] = f"{answer['error']['code']}: {answer['error']['message']}"
                    keys.pop(rel, None)
                else:
                    report.computed += 1
                    if answer["key"] != key:  # the teacher and this client disagree on key inputs
                        raise RuntimeError(f"{rel}: teacher key {answer['key']} != local key {key}; "
                                           "update lfi on one side")
        if progress is not None:
            progress(len(chunk))
    if export is not None:
        report.exported = export_store(client, keys, export)
    return report


def export_store(client: TeacherClient, keys: dict[str, str], folder: Path, batch_size: int = 256) -> int:
    writer = MapStoreWriter(folder, model=client.info()["model"])
    rels = sorted(keys)
    for chunk in _chunks(rels, batch_size):
        for rel, answer in zip(chunk, client.batch([{"key": keys[rel]} for rel in chunk]), strict=True):
            if "error" in answer:
                log.warning("%s: map vanished from the cache before export (%s)", rel, answer["error"]["message"])
                continue
            writer.add(keys[rel], decode_map(answer["map"]), image=rel)
    writer.close()
    return len(writer.images)
