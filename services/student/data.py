"""Datasets as lists of (image path, class): image folders, TinyImageNet, domain splits.

Three layouts, told apart by what is on disk:
- split layout: `ROOT/train/<class>/...` and `ROOT/val/<class>/...` (ImageFolder, the synthetic
  set), or TinyImageNet's `ROOT/val/images/` + `ROOT/val/val_annotations.txt`;
- domain layout (PACS, VLCS): `ROOT/<domain>/<class>/...`; training uses every domain not held
  out, and a fixed 10% of it (by path hash) is the validation set;
- in both, `eval_domains` names folders under ROOT evaluated as held-out domains.
Images are only listed here; decoding (and skipping what cannot be read) happens in the loader.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    rel: str  # path relative to the dataset root, posix


@dataclass
class ImageSet:
    name: str
    samples: list[Sample]

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class DatasetSplits:
    root: Path
    classes: list[str]
    train: ImageSet
    val: ImageSet
    heldout: dict[str, ImageSet] = field(default_factory=dict)
    class_words: dict[str, str] = field(default_factory=dict)  # folder name -> word the teacher is told

    def label_word(self, index: int) -> str:
        name = self.classes[index]
        return self.class_words.get(name, name)

    @property
    def words(self) -> list[str]:
        """Every class's word, in class order: the vocabulary Prompt 1 lists."""
        return [self.label_word(i) for i in range(len(self.classes))]


class DatasetError(ValueError):
    """The folder is not a dataset this loader understands; the message says what was expected."""


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_folder(root: Path, folder: Path, classes: list[str], name: str) -> ImageSet:
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for class_name in _class_folders(folder):
        if class_name not in index:
            continue  # a class the training set does not have cannot be scored
        for path in _images_below(folder / class_name):
            samples.append(Sample(path, index[class_name], path.relative_to(root).as_posix()))
    return ImageSet(name, samples)


def _tinyimagenet_val(root: Path, classes: list[str]) -> ImageSet:
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in index:
            continue
        path = root / "val" / "images" / parts[0]
        samples.append(Sample(path, index[parts[1]], path.relative_to(root).as_posix()))
    return ImageSet("val", samples)


def read_words(root: Path) -> dict[str, str]:
    """TinyImageNet's words.txt: wnid -> first synonym, so the teacher hears 'goldfish', not 'n01443537'."""
    words = root / "words.txt"
    if not words.exists():
        return {}
    out = {}
    for line in words.read_text().splitlines():
        wnid, _, names = line.partition("\t")
        if names:
            out[wnid] = names.split(",")[0].strip()
    return out


def _in_validation(rel: str, fraction: float) -> bool:
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def discover(root: str | Path, eval_domains: list[str] | None = None, *, val_fraction: float = 0.1) -> DatasetSplits:
    root = Path(root)
    eval_domains = list(eval_domains or [])
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder")
    for domain in eval_domains:
        if "/" in domain or domain in {"", ".", ".."} or not (root / domain).is_dir():
            raise DatasetError(f"held-out domain {domain!r} is not a folder under {root}")
    if (root / "train").is_dir():
        classes = _class_folders(root / "train")
        train = _image_folder(root, root / "train", classes, "train")
        if (root / "val" / "val_annotations.txt").exists():
            val = _tinyimagenet_val(root, classes)
        elif (root / "val").is_dir():
            val = _image_folder(root, root / "val", classes, "val")
        else:
            val = ImageSet("val", [])
    else:
        domains = [d for d in _class_folders(root) if d not in eval_domains]
        if not domains:
            raise DatasetError(f"{root} has no train/ folder and no domain folders to train on")
        classes = sorted({c for d in domains for c in _class_folders(root / d)})
        pooled = [s for d in domains for s in _image_folder(root, root / d, classes, d).samples]
        train = ImageSet("train", [s for s in pooled if not _in_validation(s.rel, val_fraction)])
        val = ImageSet("val", [s for s in pooled if _in_validation(s.rel, val_fraction)])
    if not classes or not train.samples:
        raise DatasetError(f"{root}: no training images found (expected one folder per class)")
    heldout = {d: _image_folder(root, root / d, classes, d) for d in eval_domains}
    return DatasetSplits(root, classes, train, val, heldout, read_words(root))
