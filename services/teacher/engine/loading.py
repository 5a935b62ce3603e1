"""Load any LLaVA checkpoint (hub id or folder) the way transformers does, with capture on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

from services.teacher.engine import capture  # registers the "lfi_capture" attention function
from shared.errors import LfiError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(LfiError):
    code = "model_load_failed"
    status = 503


def check_model_reference(model_id: str | Path) -> None:
    """Refuse a local path that is not a checkpoint folder, before anything expensive starts."""
    text = str(model_id)
    looks_local = text.startswith(("/", ".", "~")) or Path(text).exists()
    if looks_local and not (Path(text).expanduser() / "config.json").is_file():
        raise ModelLoadError(
            f"{text} is not a checkpoint folder (no config.json); give a LLaVA folder, a hub id such as "
            "llava-hf/llava-1.5-7b-hf, or builtin:tiny"
        )


@dataclass(frozen=True)
class ModelIdentity:
    """Which weights produced a map: part of every result and every cache key."""

    id: str
    revision: str


@dataclass
class LoadedVLM:
    model: LlavaForConditionalGeneration
    processor: LlavaProcessor
    identity: ModelIdentity

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)} or auto")
    return DTYPES[name]


def resolve_device(device: str = "auto", dtype: str | torch.dtype = "auto",
                   cuda_available: bool | None = None) -> tuple[str, str | torch.dtype]:
    """`auto` device: cuda when a GPU is visible, else cpu; `auto` dtype: bfloat16 on cuda, float32 elsewhere.

    A 7B model in float32 on a CPU is what a user gets by accident, never by intent: auto avoids it.
    """
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if device == "auto":
        device = "cuda" if cuda_available else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    return device, dtype


def folder_fingerprint(folder: Path) -> str:
    """A content fingerprint for a local checkpoint without reading every byte of 14 GB.

    Hashes the configs in full and, for each weight file, its size plus its first
    and last MiB (the safetensors header and a slice of tensor data).
    """
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.suffix == ".json":
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
        elif path.suffix in {".safetensors", ".bin"}:
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode())
            with path.open("rb") as f:
                digest.update(f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                digest.update(f.read(1 << 20))
    return "sha256:" + digest.hexdigest()[:16]


def load_vlm(
    model_id: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    revision: str | None = None,
    attn_implementation: str = capture.CAPTURE_IMPLEMENTATION,
) -> LoadedVLM:
    """Load a LLaVA model and its processor. `attn_implementation="eager"` is for reference tests."""
    device, dtype = resolve_device(device, dtype)
    try:
        torch_dtype = parse_dtype(dtype)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    check_model_reference(model_id)
    source = str(model_id)
    kwargs = {"revision": revision} if revision else {}
    try:
        model = LlavaForConditionalGeneration.from_pretrained(
            source, dtype=torch_dtype, attn_implementation=attn_implementation, **kwargs
        )
        model.to(device).eval()
        processor = AutoProcessor.from_pretrained(source, **kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"cannot load LLaVA checkpoint {source!r} on {device}: {exc}. A hub id needs network access or "
            "a filled Hugging Face cache; a folder needs config.json, weights and the processor files."
        ) from exc
    folder = Path(source)
    if folder.is_dir():
        resolved = folder_fingerprint(folder)
    else:
        resolved = getattr(model.config, "_commit_hash", None) or revision or "unknown"
    return LoadedVLM(model=model, processor=processor, identity=ModelIdentity(id=source, revision=resolved))


def describe(vlm: LoadedVLM) -> str:
    cfg = vlm.model.config
    return json.dumps({
        "model": vlm.identity.id, "revision": vlm.identity.revision, "dtype": str(vlm.dtype),
        "device": str(vlm.device), "text_layers": cfg.text_config.num_hidden_layers,
        "heads": cfg.text_config.num_attention_heads,
    })
