"""Optional answer backend on vLLM (the attention pass stays in transformers).

vLLM cannot return attention weights, but it can write the answers: for a big
bulk run the answer step is the part that decodes token by token, and vLLM's
continuous batching does that best. The constraints of the transformers backend
are kept token for token, not as a structured-output regex (a regex fixes the
text, not its tokenization, so the model could spell the chosen word with other
tokens than the trie's): the vocabulary choice walks the trie one greedy token
per call with `allowed_token_ids` (a trie is a few tokens deep, and the prefix
cache keeps the repeated prompt cheap), then the free part is written
unconstrained, stopped at the template's stop characters or token budget.
Answers are then cut by the same `trim_generated`, so both backends hand the
capture pass the same kind of token list.

Not on the default path; see README "vLLM" for how it was verified here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.teacher.engine.answer import AnswerPlan, trim_generated
from shared.settings import Settings


def vllm_compatible_folder(model_dir: str | Path, cache_dir: str | Path) -> str:
    """vLLM expects llava-hf's weight names (vision_tower.vision_model.*); transformers 5 saves vision_tower.*.

    Writes a renamed copy once (other files linked) and returns its folder; returns
    `model_dir` unchanged when its names already fit (e.g. llava-hf/llava-1.5-7b-hf).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = Path(model_dir)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return str(model_dir)
    with safe_open(weights[0], "pt") as f:
        keys = list(f.keys())
    if not any(k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.") for k in keys):
        return str(model_dir)
    from services.teacher.engine.loading import folder_fingerprint

    out = Path(cache_dir) / "vllm" / folder_fingerprint(folder).replace(":", "-")
    if not (out / weights[0].name).exists():
        out.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.suffix != ".safetensors" and not (out / path.name).exists():
                (out / path.name).symlink_to(path.resolve())
        for path in weights:
            tensors = load_file(path)
            renamed = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.")
                        else k): v.contiguous() for k, v in tensors.items()}
            save_file(renamed, out / path.name, metadata={"format": "pt"})
    return str(out)


class VllmAnswerer:
    """Greedy answers from a vLLM engine over the same checkpoint."""

    name = "vllm"

    def __init__(self, model_dir: str, tokenizer, *, cache_dir: str | Path | None = None, dtype: str = "auto",
                 max_model_len: int = 2048, **engine_kwargs) -> None:
        from vllm import LLM

        if cache_dir is None:
            # the declared default only: the caller (serving, CLI) passes the configured folder
            cache_dir = Settings.model_fields["cache_dir"].default
        self.tokenizer = tokenizer
        self.llm = LLM(model=vllm_compatible_folder(model_dir, cache_dir), dtype=dtype,
                       max_model_len=max_model_len, **engine_kwargs)

    def generate(self, plans: Sequence[AnswerPlan], batch: dict, images: Sequence | None = None) -> list[list[int]]:
        from vllm import SamplingParams

        if images is None:
            raise ValueError("the vLLM backend needs the PIL images of the batch")
        images = list(images)
        if len(images) != len(plans):
            raise ValueError(f"{len(plans)} plans but {len(images)} images")

        def prompt(i: int, chosen: list[int]) -> dict:
            return {"prompt_token_ids": [*plans[i].prompt_ids, *chosen], "multi_modal_data": {"image": images[i]}}

        # The vocabulary choice: one greedy token per step among the trie node's children
        # (what decoding.TransformersAnswerer allows), until every row has completed a word.
        chosen: list[list[int]] = [[] for _ in plans]
        while True:
            nodes = {i: plan.trie.walk(chosen[i])[0] for i, plan in enumerate(plans) if plan.trie is not None}
            pending = [i for i, node in nodes.items() if node is not None]
            if not pending:
                break
            params = [SamplingParams(temperature=0.0, max_tokens=1, allowed_token_ids=sorted(nodes[i].children))
                      for i in pending]
            outputs = self.llm.generate([prompt(i, chosen[i]) for i in pending], params, use_tqdm=False)
            for i, out in zip(pending, outputs, strict=True):
                chosen[i].append(out.outputs[0].token_ids[0])
        # The free part: unconstrained, up to the template's budget. vLLM's stop strings only end
        # a row early (its text then holds a stop character, so the transformers backend stopped
        # there too); `trim_generated` makes the final cut the same way for both backends.
        params = [SamplingParams(temperature=0.0, max_tokens=plan.template.max_new_tokens,
                                 stop=list(plan.template.stop_chars) or None) for plan in plans]
        outputs = self.llm.generate([prompt(i, chosen[i]) for i in range(len(plans))], params, use_tqdm=False)
        return [trim_generated(plan, [*chosen[i], *out.outputs[0].token_ids], self.tokenizer)
                for i, (plan, out) in enumerate(zip(plans, outputs, strict=True))]
