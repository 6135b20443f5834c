"""The ``image-text-to-text`` skill: vision-language models that read images in chat.

Models load with ``AutoModelForImageTextToText`` and ``AutoProcessor`` (LLaVA, Idefics3 and
SmolVLM, Qwen2-VL, Gemma 3, PaliGemma ...). The processor's chat template renders the
messages, with an image placeholder where each image part was, and the processor expands the
placeholders into image tokens and turns the images into ``pixel_values``.

transformers' continuous batching takes token ids only, so these models decode in the
:class:`~hfserve.skills.generation.batched.BatchedGenerateEngine` (concurrent requests share
``generate`` calls, each with its own sampling). Text comes out through the same incremental
detokeniser and stop matcher as the text-generation skill.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from hfserve.errors import InvalidRequestError, ModelLoadError
from hfserve.skills._threads import pace_forward_threads
from hfserve.skills.base import (
    TASK_IMAGE_TEXT_TO_TEXT,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    PreparedPrompt,
    RuntimeOptions,
    SkillInfo,
)
from hfserve.skills.text_generation import (
    _context_length,
    _Detokenizer,
    _eos_ids,
    _StopMatcher,
    _weights_bytes,
)

__all__ = ["ImageTextToTextSkill", "LoadedVisionGenerator"]

# Processor outputs that are the prompt itself, not extra model inputs.
_PROMPT_KEYS = frozenset({"input_ids", "attention_mask"})


class LoadedVisionGenerator:
    """A vision-language model and its processor (a ``MultimodalGenerationModel``)."""

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
        from hfserve.skills.generation.batched import BatchedGenerateEngine

        self.info = info
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self._model = model
        pace_forward_threads(model)
        self._processor = processor
        self._tokenizer = processor.tokenizer
        self._max_context = _context_length(model, self._tokenizer)
        # The embedding table's rows: a prompt id past them cannot be embedded.
        self._vocab_size = int(model.get_input_embeddings().num_embeddings)
        eos = _eos_ids(model, self._tokenizer)
        self._vocab_size = int(model.get_input_embeddings().num_embeddings)
        pad = self._tokenizer.pad_token_id
        self.engine = BatchedGenerateEngine(
            model,
            eos_token_ids=eos,
            pad_token_id=int(pad if pad is not None else (eos[0] if eos else 0)),
            options=options,
            max_context=self._max_context,
            vocab_size=self._vocab_size,
        )
        self._weights_bytes = _weights_bytes(model)

    @property
    def max_input_tokens(self) -> int:
        """The model's context length (prompt, image tokens included, plus generation)."""
        return self._max_context

    @property
    def vocab_size(self) -> int:
        """Prompt token ids must be in ``[0, vocab_size)`` (``GenerationModel``)."""
        return self._vocab_size

    @property
    def active_generations(self) -> int:
        """Generations being decoded or waiting for the next batch."""
        return self.engine.active

    def memory_bytes(self) -> int:
        """Bytes of weights and buffers."""
        return self._weights_bytes + self.engine.memory_bytes()

    def _add_special(self, text: str) -> bool:
        bos = getattr(self._tokenizer, "bos_token", None)
        return not (bos and text.startswith(bos))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a BOS token is added unless the text already starts with one."""
        return list(self._tokenizer.encode(text, add_special_tokens=self._add_special(text)))

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as the model will see it."""
        return len(self.encode(text))

    def render_chat(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The prompt text for ``messages`` from the processor's chat template.

        Raises:
            InvalidRequestError: the model has no chat template or the messages do not fit it.
        """
        template = getattr(self._processor, "chat_template", None) or getattr(
            self._tokenizer, "chat_template", None
        )
        if not template:
            raise InvalidRequestError(
                f"model {self.model_id!r} has no chat template; use /v1/completions instead",
                param="messages",
            )
        from jinja2 import TemplateError

        try:
            text = self._processor.apply_chat_template(
                [dict(m) for m in messages],
                chat_template=template,
                tokenize=False,
                add_generation_prompt=True,
            )
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            raise InvalidRequestError(f"cannot render the chat: {exc}", param="messages") from exc
        return str(text)

    def prepare_chat(
        self, messages: Sequence[Mapping[str, Any]], images: Sequence[Any]
    ) -> PreparedPrompt:
        """Prompt ids with image tokens expanded, and ``pixel_values`` and friends (blocking).

        Raises:
            InvalidRequestError: the chat does not render, or the processor refuses the images.
        """
        text = self.render_chat(messages)
        try:
            encoded = self._processor(
                text=[text],
                images=list(images) or None,
                add_special_tokens=self._add_special(text),
                return_tensors="pt",
            )
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            # E.g. the template dropped an image placeholder: images and tokens disagree.
            raise InvalidRequestError(
                f"the model's processor cannot take these messages: {exc}", param="messages"
            ) from exc
        ids = [int(i) for i in encoded["input_ids"][0].tolist()]
        media = {k: v for k, v in encoded.items() if k not in _PROMPT_KEYS}
        return PreparedPrompt(ids, media)

    async def start(self) -> None:
        """Start the batching engine."""
        await self.engine.start()

    async def aclose(self) -> None:
        """Fail in-flight generations with ``ShuttingDownError`` and free the model's memory."""
        from hfserve.skills._torch import free_memory

        await self.engine.aclose()
        self._model = None
        free_memory(self.device)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the generation; closing or cancelling the iterator cancels the request."""
        stream = self.engine.submit(request)
        detokenizer = _Detokenizer(self._tokenizer)
        stops = _StopMatcher(request.stop)
        completion = 0
        pending: list[int] = []
        try:
            async for event in stream:
                completion += len(event.token_ids)
                pending.extend(event.token_ids)
                text = detokenizer.push(event.token_ids)
                final = event.finish_reason is not None
                if final:
                    text += detokenizer.flush()
                out, hit = stops.feed(text, final=final)
                reason: FinishReason | None = "stop" if hit else event.finish_reason
                if out or reason is not None:
                    yield GenerationChunk(out, pending, reason, stream.prompt_tokens, completion)
                    pending = []
                if reason is not None:
                    return
        finally:
            await stream.aclose()


class ImageTextToTextSkill:
    """Vision-language models (``AutoModelForImageTextToText``): chat with images."""

    info = SkillInfo(
        name="image-text-to-text",
        task=TASK_IMAGE_TEXT_TO_TEXT,
        architectures=(
            "LlavaForConditionalGeneration",
            "LlavaNextForConditionalGeneration",
            "LlavaOnevisionForConditionalGeneration",
            "Idefics3ForConditionalGeneration",
            "SmolVLMForConditionalGeneration",
            "Qwen2VLForConditionalGeneration",
            "Qwen2_5_VLForConditionalGeneration",
            "Gemma3ForConditionalGeneration",
            "PaliGemmaForConditionalGeneration",
            "Mistral3ForConditionalGeneration",
            "*ForImageTextToText",
        ),
        model_types=(
            "llava",
            "llava_next",
            "llava_onevision",
            "idefics3",
            "smolvlm",
            "qwen2_vl",
            "qwen2_5_vl",
            "gemma3",
            "paligemma",
            "mistral3",
        ),
        endpoints=("/v1/chat/completions", "/v1/completions"),
        description="Chat with images: image_url parts (data: URLs; http(s) with "
        "--allow-remote-media) through the model's processor, batched generate calls with "
        "each request's own temperature, top_p, seed and stops.",
        version="1",
    )

    def load(
        self, model_path: str, device: str, dtype: str, options: RuntimeOptions
    ) -> LoadedVisionGenerator:
        """Load processor and model onto ``device`` in ``dtype`` (blocking).

        Raises:
            ModelLoadError: the files cannot be loaded as an image-text-to-text model.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from hfserve.skills._torch import torch_dtype

        if dtype == "auto":
            # Checkpoint dtype on accelerators; float32 on CPU, where half precision is slow.
            weights_dtype: Any = torch_dtype("float32") if device == "cpu" else "auto"
        else:
            weights_dtype = torch_dtype(dtype)
        trust = options.trust_remote_code
        try:
            processor = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                model_path, trust_remote_code=trust
            )
            model: Any = AutoModelForImageTextToText.from_pretrained(
                model_path, dtype=weights_dtype, trust_remote_code=trust
            )
            model.to(device)
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise ModelLoadError(
                f"cannot load {model_path} as an image-text-to-text model: {exc}"
            ) from exc
        if getattr(processor, "tokenizer", None) is None:
            raise ModelLoadError(f"{model_path}: the processor has no tokenizer")
        model.eval()
        return LoadedVisionGenerator(
            info=self.info,
            model_id=model_path,
            device=device,
            dtype=str(model.dtype).removeprefix("torch."),
            model=model,
            processor=processor,
            options=options,
        )
