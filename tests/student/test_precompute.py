"""`lfi maps` labels images as the student does: class words, never the 'images' folder, same vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.student.data import DatasetError, discover
from services.student.maps import prompt_vocabulary
from services.student.precompute import dataset_images

WORDS = {"n01443537": "goldfish, Carassius auratus", "n03992509": "potter's wheel",
         "n02123045": "tabby, tabby cat", "n09999999": "a class TinyImageNet does not use"}


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def tinyimagenet(tmp_path):
    """TinyImageNet's layout, three classes: train/<wnid>/images, val/images + val_annotations.txt, test/images."""
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n02123045", "n03992509"]
    for wnid in wnids:
        for i in range(2):
            _png(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", i)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t8\t8\n")
    for i in range(len(wnids)):
        _png(root / "val" / "images" / f"val_{i}.JPEG", 10 + i)
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"val_{i}.JPEG\t{wnid}\t0\t0\t8\t8\n" for i, wnid in enumerate(wnids)))
    _png(root / "test" / "images" / "test_0.JPEG", 20)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{wnid}\t{names}\n" for wnid, names in WORDS.items()))
    return root


def test_tinyimagenet_from_its_root_is_labelled_with_class_words_as_the_student_asks(tinyimagenet):
    listing = dataset_images(tinyimagenet)
    by_rel = {image.rel: image.word for image in listing.images}
    assert by_rel["train/n03992509/images/n03992509_0.JPEG"] == "potter's wheel"  # first synonym
    assert by_rel["train/n01443537/images/n01443537_1.JPEG"] == "goldfish"
    assert by_rel["val/images/val_1.JPEG"] == "tabby"  # from val_annotations.txt, not the folder
    assert "images" not in set(by_rel.values())
    assert len(listing.images) == 9 and listing.unlabelled == ["test/images/test_0.JPEG"]
    student = discover(tinyimagenet)
    assert listing.vocabulary == student.words == ["goldfish", "tabby", "potter's wheel"]
    for sample in student.train.samples:  # keyed exactly as the student looks them up
        assert by_rel[sample.rel] == student.label_word(sample.label)


def test_tinyimagenet_train_folder_alone_gets_the_same_words_and_student_paths(tinyimagenet):
    listing = dataset_images(tinyimagenet / "train")  # words.txt one folder up
    assert {image.word for image in listing.images} == {"goldfish", "tabby", "potter's wheel"}
    assert listing.vocabulary == discover(tinyimagenet).words
    rels = {image.rel for image in listing.images}
    # the store's names are the student's paths less their split folder (what StoreMaps tries second)
    assert {s.rel.split("/", 1)[1] for s in discover(tinyimagenet).train.samples} == rels
    assert listing.unlabelled == []


def test_tinyimagenet_train_folder_without_words_takes_wnids_never_images(tinyimagenet, tmp_path):
    copy = tmp_path / "copied-train"
    for image in (tinyimagenet / "train").rglob("*.JPEG"):
        target = copy / image.relative_to(tinyimagenet / "train")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
    listing = dataset_images(copy)
    assert listing.vocabulary == ["n01443537", "n02123045", "n03992509"] and len(listing.images) == 6
    assert {image.word for image in listing.images} == set(listing.vocabulary)


def test_class_per_folder_takes_folder_names(synth_small):
    listing = dataset_images(synth_small / "train")
    assert listing.vocabulary == ["circle", "cross", "square", "triangle"]
    assert all(image.rel.split("/")[0] == image.word for image in listing.images) and len(listing.images) == 32
    whole = dataset_images(synth_small)  # train, val and the held-out domain; the masks are no class
    assert len(whole.images) == 32 + 16 + 16 and all(rel.startswith("masks/") for rel in whole.unlabelled)
    assert whole.vocabulary == discover(synth_small).words


def test_domain_layout_pools_the_domains(tmp_path):
    for domain in ("photo", "art"):
        for cls in ("dog", "horse"):
            _png(tmp_path / domain / cls / "0.png")
    listing = dataset_images(tmp_path)
    assert listing.vocabulary == ["dog", "horse"]
    assert {image.rel: image.word for image in listing.images}["art/horse/0.png"] == "horse"


def test_a_folder_without_images_is_refused(tmp_path):
    with pytest.raises(DatasetError):
        dataset_images(tmp_path / "missing")
    with pytest.raises(DatasetError):
        dataset_images(tmp_path)


def test_the_vocabulary_is_cleaned_as_the_teacher_keys_it():
    assert prompt_vocabulary([" tabby ", "goldfish", "tabby", "potter's wheel"]) == \
        ("tabby", "goldfish", "potter's wheel")
    assert prompt_vocabulary(["w"] * 3 + [f"word{i}" for i in range(1000)]) is None  # more than the teacher takes
    assert prompt_vocabulary(["x" * 65]) is None
