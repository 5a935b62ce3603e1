"""`lfi maps DATASET`: precompute a dataset's maps through the teacher, asked as the student asks.

The student asks for each training image with its class word forced (`label`) and the dataset's
class words as the `vocabulary` (services/student/maps.py). Precomputed maps are only worth
anything if they are the same requests, so this module labels images with the student's own
dataset reading (services/student/data.py), not by parent folder: TinyImageNet's
`train/<wnid>/images/*.JPEG` is the class `wnid`, told to the teacher as its words.txt word,
and `val/images/*` takes its class from `val_annotations.txt`.

What `lfi maps` may be pointed at:
- a dataset root the student reads (`train/` + `val/`, TinyImageNet, or domain folders): every image
  of every split and of every other top-level folder holding class folders (held-out domains);
- one split of class folders (`ROOT/train`, `ROOT/<domain>`): the class is the top-level folder
  under it, whatever lies between it and the image; words from `words.txt` beside it or one up.
Images outside any class (TinyImageNet's unlabelled `test/`, the synthetic set's `masks/`) are
counted as unlabelled and skipped. The map store indexes images by their path relative to the
folder given, which is what `StoreMaps` looks up (the student's path, or that path less its
first folder). Resumable by construction: keys are computed locally and looked up first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from services.student.data import IMAGE_SUFFIXES, DatasetError, discover, read_words
from services.student.maps import prompt_vocabulary
from shared.codec import decode_map
from shared.errors import LfiError
from shared.images import decode_image
from shared.mapstore import MapStoreWriter
from shared.teacher_client import TeacherClient, encode_image

log = logging.getLogger("lfi.maps")


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    rel: str  # relative to the folder `lfi maps` was given, posix: the map store's name for it
    word: str  # the class word the teacher is told


@dataclass
class DatasetImages:
    images: list[LabelledImage]
    vocabulary: list[str]  # every class word, in class order (the student's `DatasetSplits.words`)
    unlabelled: list[str]  # images under the folder that belong to no class


@dataclass
class MapsReport:
    images: int = 0
    cached: int = 0
    computed: int = 0
    degenerate: int = 0
    unlabelled: int = 0
    unreadable: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    exported: int = 0


def _all_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _top_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_one_split(root: Path, paths: list[Path]) -> bool:
    """Class folders right under `root` (not domains of class folders): words.txt names them, each holds only
    TinyImageNet's `images/` folder, or every image lies directly in one (a domain layout has them two down)."""
    words = read_words(root) or read_words(root.parent)
    folders = _top_folders(root)
    if folders and words and all(f in words for f in folders):
        return True
    if folders and all(_top_folders(root / f) == ["images"] for f in folders):
        return True
    return bool(paths) and all(len(p.relative_to(root).parts) == 2 for p in paths)


def dataset_images(root: str | Path) -> DatasetImages:
    """Every image under `root` that has a class, with the word the student would force for it."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    paths = _all_images(root)
    if not (root / "train").is_dir() and _is_one_split(root, paths):
        words = read_words(root) or read_words(root.parent)
        classes = _top_folders(root)
        inside = [(p, p.relative_to(root)) for p in paths if len(p.relative_to(root).parts) > 1]
        labelled = [LabelledImage(p, rel.as_posix(), words.get(rel.parts[0], rel.parts[0])) for p, rel in inside]
        vocabulary = [words.get(c, c) for c in classes]
    else:
        others = [d for d in _top_folders(root) if d not in {"train", "val"}] if (root / "train").is_dir() else []
        data = discover(root, others)
        splits = [data.train, data.val, *data.heldout.values()]
        labelled = [LabelledImage(s.path, s.rel, data.label_word(s.label)) for split in splits for s in split.samples]
        vocabulary = data.words
    listed = {image.rel for image in labelled}
    unlabelled = [rel for p in paths if (rel := p.relative_to(root).as_posix()) not in listed]
    return DatasetImages(sorted(labelled, key=lambda image: image.rel), vocabulary, unlabelled)


@dataclass(frozen=True)
class MapsOptions:
    task: str = "classification"
    prompt: str | None = None
    grid: tuple[int, int] | None = None
    batch_size: int = 32
    choose: bool = False  # no label: the VLM chooses the foreground among the class words


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _request(image: LabelledImage, vocabulary: tuple[str, ...] | None, options: MapsOptions) -> dict:
    request = {"task": options.task, "prompt": options.prompt, "grid": list(options.grid) if options.grid else None,
               "label": None if options.choose else image.word, "vocabulary": list(vocabulary) if vocabulary else None}
    return {k: v for k, v in request.items() if v is not None}


def precompute_dataset(client: TeacherClient, root: Path, options: MapsOptions, *, export: Path | None = None,
                       progress: Callable[[int], None] | None = None,
                       listing: DatasetImages | None = None) -> MapsReport:
    listing = listing or dataset_images(root)
    vocabulary = prompt_vocabulary(listing.vocabulary)
    if options.choose and vocabulary is None:
        raise ValueError("the class words cannot be sent as a vocabulary to choose from; drop --choose")
    report = MapsReport(images=len(listing.images), unlabelled=len(listing.unlabelled))
    keys: dict[str, str] = {}  # rel -> key
    degenerate: set[str] = set()
    for chunk in _chunks(listing.images, options.batch_size):
        items = []
        for image in chunk:
            try:
                pixels = decode_image(image.path.read_bytes())
            except (LfiError, OSError) as exc:
                report.unreadable.append(image.rel)
                log.warning("skipping %s: %s", image.rel, exc)
                continue
            request = _request(image, vocabulary, options)
            key = client.key_for(pixels, task=options.task, label=request.get("label"),
                                 vocabulary=request.get("vocabulary"), prompt=options.prompt, grid=options.grid)
            keys[image.rel] = key
            items.append((image.rel, key, request, pixels))
        _ask(client, items, keys, degenerate, report)
        if progress is not None:
            progress(len(chunk))
    report.degenerate = len(degenerate)
    if export is not None:
        report.exported = export_store(client, keys, export)
    return report


def _ask(client: TeacherClient, items: list[tuple], keys: dict[str, str], degenerate: set[str],
         report: MapsReport) -> None:
    """Look the chunk's keys up, then compute what the cache lacks (bulk priority)."""
    found = client.batch([{"key": key} for _, key, _, _ in items]) if items else []
    missing = []
    for item, answer in zip(items, found, strict=True):
        if "error" in answer:
            missing.append(item)
        elif answer.get("degenerate"):
            degenerate.add(item[1])
    report.cached += len(items) - len(missing)
    if not missing:
        return
    bodies = [{**request, "image": encode_image(pixels), "priority": "bulk"} for _, _, request, pixels in missing]
    for (rel, key, _, _), answer in zip(missing, client.batch(bodies), strict=True):
        if "error" in answer:
            report.failed[rel] = f"{answer['error']['code']}: {answer['error']['message']}"
            keys.pop(rel, None)
            continue
        report.computed += 1
        if answer.get("degenerate"):
            degenerate.add(key)
        if answer["key"] != key:  # the teacher and this client disagree on key inputs
            raise RuntimeError(f"{rel}: teacher key {answer['key']} != local key {key}; update lfi on one side")


def export_store(client: TeacherClient, keys: dict[str, str], folder: Path, batch_size: int = 256) -> int:
    """Write the maps of `keys` (rel -> key) from the teacher's cache into a map store, degenerate ones flagged."""
    writer = MapStoreWriter(folder, model=client.info()["model"])
    rels = sorted(keys)
    for chunk in _chunks(rels, batch_size):
        for rel, answer in zip(chunk, client.batch([{"key": keys[rel]} for rel in chunk]), strict=True):
            if "error" in answer:
                log.warning("%s: map vanished from the cache before export (%s)", rel, answer["error"]["message"])
                continue
            writer.add(keys[rel], decode_map(answer["map"]), image=rel, degenerate=bool(answer.get("degenerate")))
    writer.close()
    return len(writer.images)
