"""Check that the vLLM answer backend gives the transformers backend's answers.

Run it in a virtual environment that has vLLM (see README, "vLLM"):
    PYTHONPATH=. VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 python scripts/verify_vllm.py DIR
where DIR is a checkpoint from `lfi teacher build-tiny`. Prints one line per request and exits 1 on a mismatch.
"""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image


def main() -> int:
    from services.teacher.engine.extraction import InteractionEngine, InteractionRequest
    from services.teacher.tiny.demo import demo_sample
    from shared.synth import CLASSES

    model_dir = sys.argv[1]
    requests = []
    for i in range(6):
        sample = demo_sample(i)
        image = Image.fromarray(sample.image)
        requests.append(InteractionRequest(image=image, vocabulary=list(CLASSES)))
        requests.append(InteractionRequest(image=image, label=sample.cls))
    reference = InteractionEngine.from_pretrained(model_dir).extract_batch(requests)
    engine = InteractionEngine.from_pretrained(model_dir, answer_backend="vllm")
    candidate = engine.extract_batch(requests)
    failures = 0
    for i, (ref, got) in enumerate(zip(reference, candidate, strict=True)):
        same = ref.answer == got.answer and np.allclose(ref.map, got.map, atol=1e-5)
        failures += not same
        print(f"{i:2d} {'same' if same else 'DIFF'} transformers={ref.answer!r} vllm={got.answer!r}")
    print(f"{len(requests) - failures}/{len(requests)} identical")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
