"""Dataset layouts: image folders, TinyImageNet, domain splits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.student.data import DatasetError, discover


def _png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_synthetic_split_layout_with_a_held_out_domain(synth_small):
    data = discover(synth_small, ["shifted"])
    assert data.classes == ["circle", "cross", "square", "triangle"]
    assert len(data.train) == 32 and len(data.val) == 16 and len(data.heldout["shifted"]) == 16
    sample = data.train.samples[0]
    assert sample.rel.startswith("train/") and data.classes[sample.label] in sample.rel


def test_tinyimagenet_layout(tmp_path):
    for wnid in ("n01443537", "n01629819"):
        _png(tmp_path / "train" / wnid / "images" / f"{wnid}_0.JPEG")
    _png(tmp_path / "val" / "images" / "val_0.JPEG")
    _png(tmp_path / "val" / "images" / "val_1.JPEG")
    (tmp_path / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn01629819\t0\t0\t8\t8\nval_1.JPEG\tn01443537\t1\t1\t7\t7\n")
    (tmp_path / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    data = discover(tmp_path)
    assert data.classes == ["n01443537", "n01629819"]
    assert [s.label for s in data.val.samples] == [1, 0]
    assert data.label_word(0) == "goldfish"  # the teacher hears a word, not a wnid


def test_domain_layout_trains_on_the_other_domains(tmp_path):
    for domain in ("photo", "art", "sketch"):
        for cls in ("dog", "horse"):
            for i in range(20):
                _png(tmp_path / domain / cls / f"{i}.png", i)
    data = discover(tmp_path, ["sketch"])
    assert {s.rel.split("/")[0] for s in data.train.samples + data.val.samples} == {"photo", "art"}
    assert len(data.train) + len(data.val) == 80 and 0 < len(data.val) < 20
    assert len(data.heldout["sketch"]) == 40
    assert discover(tmp_path, ["sketch"]).val.samples == data.val.samples  # the split is fixed


@pytest.mark.parametrize("domains", [["missing"], ["../etc"], [""]])
def test_a_bad_held_out_domain_is_refused(synth_small, domains):
    with pytest.raises(DatasetError, match="held-out domain"):
        discover(synth_small, domains)


def test_an_empty_folder_is_not_a_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no train"):
        discover(tmp_path)
