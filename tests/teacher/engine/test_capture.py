"""The capture kernel against transformers' own eager attention weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from services.teacher.engine.extraction import ExtractionSettings, InteractionEngine, InteractionRequest
from services.teacher.engine.loading import load_vlm


def _image(seed: int, size=(320, 240)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _requests() -> list[InteractionRequest]:
    # Different vocabulary lengths -> different prompt lengths -> a left-padded batch.
    return [
        InteractionRequest(image=_image(0), vocabulary=["circle", "square"]),
        InteractionRequest(image=_image(1, (200, 300)), vocabulary=["circle", "square", "triangle", "star", "ring"]),
        InteractionRequest(image=_image(2), label="dog"),
    ]


def _captured_runs(engine: InteractionEngine, requests):
    runs = []
    for i, req in enumerate(requests):
        valid, _, _ = engine.validate(req)
        runs.extend(engine._runs(i, valid))
    engine._compute(runs)  # the default capture mode, "decode" (test_decode.py: second-pass gives the same)
    return runs


def _eager_reference(model_dir, engine: InteractionEngine, runs, settings: ExtractionSettings):
    """fore/back per layer from `output_attentions=True` on the eager kernel, one sequence at a time."""
    eager = load_vlm(model_dir, attn_implementation="eager")
    heads = list(settings.heads) if settings.heads is not None else slice(None)
    out = []
    for run in runs:
        seq = engine.encoder.expand(run.plan.prompt_ids) + run.generated
        batch = engine.encoder.encode([seq], [run.image])
        with torch.no_grad():
            attentions = eager.model(**batch, output_attentions=True).attentions
        start = len(engine.encoder.expand(run.plan.prompt_ids[: run.plan.answer_start]))
        cols = (batch["input_ids"][0] == engine.image_token_id).nonzero().squeeze(1)

        def rows_of(indices, attentions=attentions, start=start, cols=cols):
            if not indices:
                return None
            per_layer = []
            for layer in engine.captured_layers:
                a = attentions[layer][0][heads][:, [start + i for i in indices]][:, :, cols]  # (H, A, N)
                reduced = a.amax(0) if settings.head_reduce == "max" else a.mean(0)
                per_layer.append(reduced.mean(0).numpy())
            return np.stack(per_layer)

        out.append((rows_of(run.fore_rows), rows_of(run.back_rows)))
    return out


@pytest.mark.parametrize(
    ("which", "settings"),
    [
        ("mha", ExtractionSettings()),
        ("gqa", ExtractionSettings()),
        ("mha", ExtractionSettings(layers=(1, 3), heads=(1,), head_reduce="max")),
    ],
)
def test_capture_matches_eager_attentions(which, settings, tiny_dir, tiny_gqa_dir):
    model_dir = str(tiny_dir if which == "mha" else tiny_gqa_dir)
    engine = InteractionEngine.from_pretrained(model_dir, settings=settings, max_batch_size=8)
    if which == "gqa":
        cfg = engine.vlm.model.config.text_config
        assert cfg.num_key_value_heads < cfg.num_attention_heads
    runs = _captured_runs(engine, _requests())
    lengths = {len(engine.encoder.expand(r.plan.prompt_ids)) + len(r.generated) for r in runs}
    assert len(lengths) > 1, "the batch must be left-padded for this test to mean anything"
    reference = _eager_reference(model_dir, engine, runs, settings)
    for run, (fore, back) in zip(runs, reference, strict=True):
        assert run.fore_rows, f"no foreground tokens selected in {run.answer!r}"
        np.testing.assert_allclose(run.fore, fore, atol=1e-5, rtol=0)
        if back is None:
            assert run.back is None
        else:
            np.testing.assert_allclose(run.back, back, atol=1e-5, rtol=0)


def test_capture_refuses_a_model_without_the_kernel(tiny_dir):
    from services.teacher.engine.capture import capturing

    eager = load_vlm(tiny_dir, attn_implementation="eager")
    with pytest.raises(RuntimeError, match="lfi_capture"), capturing(eager.model, torch.zeros(1, 1), torch.zeros(1, 1)):
        pass
