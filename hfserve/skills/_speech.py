"""Loaded speech recognition models: audio decoded off the loop, cut into 30 s windows, the
windows of all callers micro-batched, and the windows' texts stitched into timed segments.

Two model families: sequence-to-sequence (Whisper and kin, ``generate``) and CTC (wav2vec2,
one greedy forward pass). Imported only when such a model is loaded (it imports torch).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from hfserve.core.batcher import MicroBatcher
from hfserve.errors import InferenceError, InvalidRequestError, ShuttingDownError
from hfserve.skills._threads import pace_forward_threads
from hfserve.skills._torch import free_memory, module_memory_bytes
from hfserve.skills.audio import WINDOW_SECONDS, decode_audio, windows
from hfserve.skills.base import (
    RuntimeOptions,
    SkillInfo,
    Transcription,
    TranscriptionOptions,
    TranscriptSegment,
)

__all__ = ["CTCSpeechModel", "Seq2SeqSpeechModel", "SpeechModel", "WindowText"]

log = logging.getLogger("hfserve.skills")


@dataclass(frozen=True)
class _Window:
    """One batch item: a window's samples and the options of the request it belongs to."""

    samples: np.ndarray
    options: TranscriptionOptions


@dataclass(frozen=True)
class WindowText:
    """What the model made of one window: its text and the token ids behind it."""

    text: str
    token_ids: list[int]


class SpeechModel(ABC):
    """A speech recognition model served through a ``MicroBatcher`` of 30 s windows."""

    def __init__(
        self,
        *,
        info: SkillInfo,
        model_id: str,
        device: str,
        dtype: str,
        model: Any,
        processor: Any,
        options: RuntimeOptions,
    ) -> None:
        self.info = info
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self._model = model
        pace_forward_threads(model)
        self._processor = processor
        self._extractor = processor.feature_extractor
        self._tokenizer = processor.tokenizer
        self.sampling_rate = int(self._extractor.sampling_rate)
        self._options = options
        self._memory = module_memory_bytes(model)
        self._batcher: MicroBatcher[_Window, WindowText] | None = None

    @property
    @abstractmethod
    def max_input_tokens(self) -> int:
        """The most tokens the model produces (or frames it scores) for one window."""

    @property
    def can_translate(self) -> bool:
        """Whether the model translates speech to English (only multilingual Whisper does)."""
        return False

    def memory_bytes(self) -> int:
        """Bytes of parameters and buffers."""
        return self._memory

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with the model's tokenizer."""
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    @property
    def queue_depth(self) -> int:
        """Windows waiting for a batch (for the ``hfserve_queue_depth`` gauge)."""
        return self._batcher.queue_depth if self._batcher is not None else 0

    async def start(self) -> None:
        """Start the micro-batcher (one item per window; batch size from the settings)."""
        if self._batcher is not None:
            return
        opts = self._options
        self._batcher = MicroBatcher(
            self._run_batch,
            max_batch_size=opts.max_batch_size,
            max_wait_ms=opts.max_wait_ms,
            max_queue=opts.max_queue,
            name=self.model_id,
            observer=opts.batch_observer,
        )
        await self._batcher.start()

    async def aclose(self) -> None:
        """Stop the batcher (failing queued work), drop the weights and free their memory."""
        if self._batcher is not None:
            await self._batcher.aclose()
        self._model = None
        free_memory(self.device)

    async def transcribe(self, audio: bytes, options: TranscriptionOptions) -> Transcription:
        """Decode ``audio``, transcribe its windows (batched with other callers) and stitch them.

        Raises:
            InvalidRequestError: not audio, too long, or options this model cannot honour.
        """
        if self._batcher is None or self._model is None:
            raise ShuttingDownError(f"model {self.model_id!r} is not running (unloaded or closing)")
        self.check_options(options)
        rate = self.sampling_rate
        samples = await asyncio.to_thread(decode_audio, audio, rate, options.max_seconds)
        spans = list(windows(samples, rate, WINDOW_SECONDS))
        # All or nothing: a full queue refuses the whole file rather than half of its windows.
        texts = await self._batcher.submit_many([_Window(w.samples, options) for w in spans])
        segments = [
            TranscriptSegment(i, w.start, w.end, t.text.strip(), t.token_ids)
            for i, (w, t) in enumerate(zip(spans, texts, strict=True))
        ]
        return Transcription(
            text=" ".join(s.text for s in segments if s.text),
            segments=segments,
            duration=samples.shape[0] / rate,
            language=options.language,
            tokens=sum(len(t.token_ids) for t in texts),
        )

    def check_options(self, options: TranscriptionOptions) -> None:
        """Refuse what this model cannot do, naming the field (never silently ignored).

        Raises:
            InvalidRequestError: a translation, language, prompt or temperature it cannot honour.
        """
        if options.task == "translate" and not self.can_translate:
            raise InvalidRequestError(
                f"model {self.model_id!r} cannot translate speech; use /v1/audio/transcriptions",
                param="model",
            )

    def _run_batch(self, batch: Sequence[_Window]) -> list[WindowText | BaseException]:
        """Run the windows, grouped by their request options (one model call per group)."""
        groups: dict[TranscriptionOptions, list[int]] = {}
        for index, item in enumerate(batch):
            groups.setdefault(item.options, []).append(index)
        out: list[WindowText | BaseException | None] = [None] * len(batch)
        for options, indices in groups.items():
            results: Sequence[WindowText | BaseException]
            try:
                results = self._transcribe_windows([batch[i].samples for i in indices], options)
            except Exception as exc:
                log.error("model %r failed on a batch", self.model_id, exc_info=exc)
                error = InferenceError(
                    f"model {self.model_id!r} failed on this audio ({type(exc).__name__})"
                )
                results = [error] * len(indices)
            for i, result in zip(indices, results, strict=True):
                out[i] = result
        return [item for item in out if item is not None]

    @abstractmethod
    def _transcribe_windows(
        self, samples: list[np.ndarray], options: TranscriptionOptions
    ) -> Sequence[WindowText]:
        """Transcribe windows that share ``options`` (in the batcher's worker thread)."""


class Seq2SeqSpeechModel(SpeechModel):
    """Whisper-family models: log-mel features, ``generate`` per batch of windows."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = self._model.config
        self._whisper = config.model_type == "whisper"
        self._generation = self._model.generation_config
        self._languages: dict[str, str] = {
            token.strip("<|>"): token for token in getattr(self._generation, "lang_to_id", {}) or {}
        }
        self._max_target = int(getattr(config, "max_target_positions", 448) or 448)
        self._param_dtype = next(self._model.parameters()).dtype

    @property
    def max_input_tokens(self) -> int:
        """The most tokens the decoder holds for one window."""
        return self._max_target

    @property
    def can_translate(self) -> bool:
        """Multilingual Whisper translates (its generation config knows the task)."""
        tasks = getattr(self._generation, "task_to_id", None) or {}
        return self._whisper and "translate" in tasks and bool(self._languages)

    def check_options(self, options: TranscriptionOptions) -> None:
        """Language and prompt only for Whisper, and only languages its tokenizer knows."""
        super().check_options(options)
        language = options.language.lower() if options.language is not None else None
        # An English-only Whisper has no language tokens: "en" is what it does anyway.
        english_only = self._whisper and not self._languages and language == "en"
        if language is not None and language not in self._languages and not english_only:
            known = ", ".join(sorted(self._languages)) or "none"
            raise InvalidRequestError(
                f"language {options.language!r} is not one this model knows (known: {known})",
                param="language",
            )
        if options.prompt and not self._whisper:
            raise InvalidRequestError(
                f"model {self.model_id!r} does not take a prompt", param="prompt"
            )
        if options.prompt:
            try:
                self._tokenizer.get_prompt_ids(options.prompt)
            except ValueError as exc:
                raise InvalidRequestError(f"invalid prompt: {exc}", param="prompt") from None

    def _transcribe_windows(
        self, samples: list[np.ndarray], options: TranscriptionOptions
    ) -> Sequence[WindowText]:
        features = self._extractor(
            samples,
            sampling_rate=self.sampling_rate,
            return_tensors="pt",
            return_attention_mask=True,
        )
        # Whisper and Speech2Text read log-mel "input_features", Moonshine raw "input_values".
        key = str(getattr(self._model, "main_input_name", "input_features"))
        kwargs: dict[str, Any] = {key: features[key].to(self.device, self._param_dtype)}
        if "attention_mask" in features:
            kwargs["attention_mask"] = features["attention_mask"].to(self.device)
        if options.temperature > 0:
            kwargs.update(do_sample=True, temperature=options.temperature)
        else:
            kwargs["do_sample"] = False
        if self._whisper and self._languages:
            kwargs["task"] = options.task
            if options.language is not None:
                kwargs["language"] = options.language.lower()
        if options.prompt:
            prompt = self._tokenizer.get_prompt_ids(options.prompt, return_tensors="pt")
            kwargs["prompt_ids"] = prompt.to(self.device)
        with torch.inference_mode():
            sequences = self._model.generate(**kwargs)
        special = set(self._tokenizer.all_special_ids)
        results: list[WindowText] = []
        for row in sequences.cpu().tolist():
            text = self._tokenizer.decode(row, skip_special_tokens=True)
            results.append(WindowText(text, [t for t in row if t not in special]))
        return results


class CTCSpeechModel(SpeechModel):
    """CTC models (wav2vec2, HuBERT, WavLM): one forward pass, greedy decoding of the frames."""

    @property
    def max_input_tokens(self) -> int:
        """Output frames of one 30 s window."""
        ratio = int(getattr(self._model.config, "inputs_to_logits_ratio", 320) or 320)
        return int(WINDOW_SECONDS * self.sampling_rate) // ratio

    def check_options(self, options: TranscriptionOptions) -> None:
        """CTC reads no prompt, has one language and decodes greedily."""
        super().check_options(options)
        if options.language is not None:
            raise InvalidRequestError(
                f"model {self.model_id!r} (CTC) transcribes the one language it was trained on; "
                "omit language",
                param="language",
            )
        if options.prompt:
            raise InvalidRequestError(
                f"model {self.model_id!r} (CTC) does not take a prompt", param="prompt"
            )
        if options.temperature > 0:
            raise InvalidRequestError(
                f"model {self.model_id!r} (CTC) decodes greedily; omit temperature or send 0",
                param="temperature",
            )

    def _transcribe_windows(
        self, samples: list[np.ndarray], options: TranscriptionOptions
    ) -> Sequence[WindowText]:
        # The extractor pads and says (per its config) whether this model wants a mask:
        # group-norm wav2vec2 checkpoints must not get one.
        inputs = self._extractor(
            samples, sampling_rate=self.sampling_rate, return_tensors="pt", padding=True
        )
        values = inputs["input_values"].to(self.device, next(self._model.parameters()).dtype)
        kwargs: dict[str, Any] = {"input_values": values}
        if "attention_mask" in inputs:
            kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        with torch.inference_mode():
            logits = self._model(**kwargs).logits
        ids = logits.argmax(dim=-1).cpu()
        ratio = int(getattr(self._model.config, "inputs_to_logits_ratio", 320) or 320)
        results: list[WindowText] = []
        blank = self._tokenizer.pad_token_id
        for row, window in zip(ids.tolist(), samples, strict=True):
            frames = row[: max(1, -(-window.shape[0] // ratio))]
            text = self._tokenizer.decode(frames, skip_special_tokens=True)
            collapsed = [
                t for i, t in enumerate(frames) if t != blank and (i == 0 or t != frames[i - 1])
            ]
            results.append(WindowText(text, collapsed))
        return results
