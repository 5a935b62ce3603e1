"""Where a student's C_VLM maps come from: the teacher over HTTP, or an exported map store.

`TeacherMaps` asks the teacher in batches: first by key only (the key is computed here from
our own pixels, so a cached map costs neither an upload nor a decode), then with the images
for what is missing. Every map is kept in memory and on local disk, so from epoch 2 on no
request leaves the process. While the teacher is down it waits, says so through `on_wait`,
and goes on when the teacher is back; it stops waiting only when `should_stop` says so.

Every request forces the image's class word as the foreground (`label`) and sends the dataset's
class words as the `vocabulary`, so Prompt 1's "choose the foreground word from the list below:"
lists the classes, as in the paper. `lfi maps` (services/student/precompute.py) asks the same way,
so its maps are cache hits here.

A map the teacher flags `degenerate` (fore - back <= 0 everywhere; the teacher sends a uniform map)
is handed on as all zeros: no target, so it adds no alignment term (the loader counts it).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from services.student.data import Sample
from shared.codec import decode_map
from shared.mapstore import MapStore
from shared.schemas import MAX_VOCABULARY
from shared.teacher_client import TeacherClient, TeacherUnavailable, encode_image

log = logging.getLogger("lfi.student.maps")
MAX_WORD_CHARS = 64  # shared.schemas.Word: the teacher refuses longer words
# Per-item answers that mean "not now" rather than "never for this image": wait for them, like a teacher that is down.
# (engine_error is not among them: an image that breaks the engine would be retried forever)
TRANSIENT_CODES = {"rate_limited", "quota_exceeded", "unavailable", "timeout"}


def prompt_vocabulary(words: Sequence[str]) -> tuple[str, ...] | None:
    """The class words as the teacher's `vocabulary`: stripped, duplicates dropped, order kept (what the teacher
    keys its cache on, so a key computed here matches). None when the teacher could not take the list
    (too many words, or a word too long): the label alone is then sent, and the prompt lists nothing."""
    cleaned = tuple(dict.fromkeys(word.strip() for word in words))
    if not cleaned or len(cleaned) > MAX_VOCABULARY or any(not 0 < len(w) <= MAX_WORD_CHARS for w in cleaned):
        log.warning("the %d class words cannot be the teacher's vocabulary (at most %d words of 1..%d "
                    "characters); maps are asked with the label alone", len(cleaned), MAX_VOCABULARY, MAX_WORD_CHARS)
        return None
    return cleaned


class Stopped(Exception):
    """Raised while waiting for the teacher when the caller asked to stop (e.g. a cancelled job)."""


@dataclass(frozen=True)
class MapRequest:
    sample: Sample
    image: Image.Image
    label: str  # the class word the teacher is told (forced foreground)
    box: tuple[float, float, float, float] | None = None  # detection: the one instance (x0, y0, x1, y1 pixels)

    def teacher_fields(self) -> dict:
        """What the teacher is told besides the image: the forced label, or the one labelled box (dense prompt)."""
        if self.box is None:
            return {"label": self.label}
        return {"task": "detection", "boxes": [{"xyxy": [float(v) for v in self.box], "label": self.label}]}


class MapSource(Protocol):
    def fetch(self, requests: Sequence[MapRequest]) -> list[np.ndarray | None]: ...


class TeacherMaps:
    def __init__(self, client: TeacherClient, *, prompt: str | None = None, vocabulary: Sequence[str] | None = None,
                 cache_dir: Path | None = None, batch_size: int = 64,
                 on_wait: Callable[[str | None], None] | None = None, should_stop: Callable[[], bool] | None = None,
                 max_backoff_s: float = 10.0) -> None:
        self.client = client
        self.prompt = prompt
        cleaned = prompt_vocabulary(vocabulary) if vocabulary else None
        self.vocabulary = list(cleaned) if cleaned else None
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self.on_wait = on_wait or (lambda reason: None)
        self.should_stop = should_stop or (lambda: False)
        self.max_backoff_s = max_backoff_s
        self._keys: dict[tuple, str] = {}  # (image rel path, label, box) -> key: no re-hashing after epoch 1
        self._memory: dict[str, np.ndarray] = {}
        self.stats = {"memory": 0, "disk": 0, "teacher_cached": 0, "teacher_computed": 0, "failed": 0,
                      "degenerate": 0}

    def _until_teacher_answers(self, call: Callable[[], object]):
        """Run `call`; while the teacher is unreachable, report it and retry with backoff."""
        delay, waiting = 0.5, False
        try:
            while True:
                try:
                    return call()
                except TeacherUnavailable as exc:
                    if not waiting:
                        waiting = True
                        log.warning("waiting for the teacher: %s", exc)
                        self.on_wait(str(exc))
                    if self.should_stop():
                        raise Stopped("stopped while waiting for the teacher") from exc
                    time.sleep(delay)
                    delay = min(delay * 2, self.max_backoff_s)
        finally:
            if waiting:
                self.on_wait(None)

    def _teacher_fields(self, request: MapRequest) -> dict:
        """The request's own fields, plus the class words as Prompt 1's vocabulary (classification only: the
        dense prompt names its box's label)."""
        fields = request.teacher_fields()
        if request.box is None and self.vocabulary:
            fields["vocabulary"] = self.vocabulary
        return fields

    def _key(self, request: MapRequest) -> str:
        memo = (request.sample.rel, request.label, request.box)
        key = self._keys.get(memo)
        if key is None and self.prompt is not None:
            prompts = self._until_teacher_answers(self.client.info)["prompts"]
            if self.prompt not in prompts:
                raise ValueError(f"the teacher has no prompt {self.prompt!r}; it offers {sorted(prompts)}")
        if key is None:
            key = self._until_teacher_answers(
                lambda: self.client.key_for(request.image, prompt=self.prompt, **self._teacher_fields(request)))
            self._keys[memo] = key
        return key

    def _disk_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.npy" if self.cache_dir else None

    def _remember(self, key: str, values: np.ndarray) -> None:
        values = values.astype(np.float16)
        self._memory[key] = values
        path = self._disk_path(key)
        if path is None:
            return
        try:  # several jobs share the cache folder: a private temp file, then an atomic rename
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(handle, "wb") as out:
                np.save(out, values)
            os.replace(tmp, path)
        except OSError as exc:  # the disk cache is an accelerator; the map is in memory anyway
            log.warning("could not cache map %s on disk: %s", key, exc)

    def _local(self, key: str) -> np.ndarray | None:
        values = self._memory.get(key)
        if values is not None:
            self.stats["memory"] += 1
            return values
        path = self._disk_path(key)
        if path is not None and path.exists():
            try:
                values = np.load(path)
            except (OSError, ValueError):
                return None  # a torn file from a killed run: fetch it again
            self._memory[key] = values
            self.stats["disk"] += 1
            return values
        return None

    def fetch(self, requests: Sequence[MapRequest]) -> list[np.ndarray | None]:
        keys = [self._key(r) for r in requests]
        out: list[np.ndarray | None] = [self._local(k) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            found = self._until_teacher_answers(lambda c=chunk: self.client.batch([{"key": keys[i]} for i in c]))
            to_compute = []
            for i, answer in zip(chunk, found, strict=True):
                if "error" in answer:
                    to_compute.append(i)
                else:
                    out[i] = self._target(answer)
                    self._remember(keys[i], out[i])
                    self.stats["teacher_cached"] += 1
            if not to_compute:
                continue
            bodies = [{"image": encode_image(requests[i].image), **self._teacher_fields(requests[i]),
                       "priority": "bulk", **({"prompt": self.prompt} if self.prompt else {})} for i in to_compute]
            answers = self._until_teacher_answers(lambda b=bodies: _no_transient_errors(self.client.batch(b)))
            for i, answer in zip(to_compute, answers, strict=True):
                if "error" in answer:
                    # this image trains without alignment; the reason is logged, not fatal
                    self.stats["failed"] += 1
                    log.warning("no map for %s: %s", requests[i].sample.rel, answer["error"]["message"])
                    continue
                out[i] = self._target(answer)
                self._remember(keys[i], out[i])
                self.stats["teacher_computed"] += 1
        return [None if v is None else v.astype(np.float32) for v in out]


    def _target(self, answer: dict) -> np.ndarray:
        values = decode_map(answer["map"])
        if answer.get("degenerate"):
            self.stats["degenerate"] += 1
            return np.zeros_like(values)  # the teacher's uniform fallback would teach "look everywhere"
        return values


def _no_transient_errors(answers: list[dict]) -> list[dict]:
    for answer in answers:
        code = answer.get("error", {}).get("code")
        if code in TRANSIENT_CODES:
            raise TeacherUnavailable(f"teacher answered {code}: {answer['error']['message']}")
    return answers


class StoreMaps:
    """Maps from a store written by `lfi maps --export`, looked up by image path; no teacher needed."""

    def __init__(self, store: MapStore | str | Path) -> None:
        self.store = store if isinstance(store, MapStore) else MapStore(store)
        self.stats = {"found": 0, "missing": 0}

    def fetch(self, requests: Sequence[MapRequest]) -> list[np.ndarray | None]:
        out = []
        for request in requests:
            rel = request.sample.rel
            # `lfi maps` may have been pointed at the dataset root or at one split folder below it
            key = self.store.images.get(rel)
            if key is None and "/" in rel:
                key = self.store.images.get(rel.split("/", 1)[1])
            values = None if key is None else self.store.get(key)
            self.stats["found" if values is not None else "missing"] += 1
            if values is not None and key in self.store.degenerate:
                values = np.zeros_like(values)  # flagged by the teacher: no target (see TeacherMaps)
            out.append(values)
        return out


class MaskMaps:
    """The synthetic set's ground-truth object masks as maps: an oracle teacher for tests and baselines.

    `ROOT/masks/<rel>` mirrors `ROOT/<rel>` (see `lfi data synth`).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def fetch(self, requests: Sequence[MapRequest]) -> list[np.ndarray | None]:
        out = []
        for request in requests:
            path = self.root / "masks" / request.sample.rel
            if not path.exists():
                out.append(None)
                continue
            mask = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
            total = mask.sum()
            out.append(mask / total if total > 0 else None)
        return out
