"""The ``text-generation`` skill: causal LMs for chat and completions.

The model runs in :class:`~hfserve.skills.generation.engine.GenerationEngine` (transformers'
continuous batching with per-request sampling). This module turns its token events into
text: incremental detokenisation that never splits a UTF-8 character, stop sequences that are
cut out of the text even when they span chunks, and usage counts.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hfserve.errors import InvalidRequestError, ModelLoadError
from hfserve.skills.base import (
    TASK_GENERATION,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    RuntimeOptions,
    SkillInfo,
    TokenLogprob,
)
from hfserve.skills.limits import declared_limit

if TYPE_CHECKING:
    from hfserve.skills.generation.grammar import CompiledGrammar
    from hfserve.skills.generation.stage import StepLogprobs

__all__ = ["LoadedTextGenerator", "TextGenerationSkill"]


class _Detokenizer:
    """Incremental decoding: text appears only once its bytes form whole characters.

    Decodes a short window of recent tokens (the text-generation-inference approach), so a
    byte-level token that ends in the middle of a character is held until the next one.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, ids: Sequence[int]) -> str:
        """Add tokens; return the newly complete text."""
        self._ids.extend(ids)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) > len(prefix_text) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """The text still held back at the end, without a dangling partial character."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :]).rstrip("\ufffd")
        self._prefix = self._read = len(self._ids)
        return text[len(prefix_text) :]


class _StopMatcher:
    """Finds stop sequences in streamed text, holding back what could start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._buffer = ""

    def feed(self, text: str, *, final: bool) -> tuple[str, bool]:
        """Add text; return the text safe to emit and whether a stop sequence was hit."""
        self._buffer += text
        hits = [i for i in (self._buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            out, self._buffer = self._buffer[: min(hits)], ""
            return out, True
        keep = 0 if final else self._held_length()
        cut = len(self._buffer) - keep
        out, self._buffer = self._buffer[:cut], self._buffer[cut:]
        return out, False

    def _held_length(self) -> int:
        """Length of the longest buffer suffix that is a proper prefix of some stop sequence."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._buffer)), best, -1):
                if self._buffer.endswith(stop[:n]):
                    best = n
                    break
        return best


class LoadedTextGenerator:
    """A causal LM and its tokenizer behind the generation engine (a ``GenerationModel``)."""

    def __init__(
        self,
        *,
        info: SkillInfo,
        model_id: str,
        device: str,
        dtype: str,
        model: Any,
        tokenizer: Any,
        options: RuntimeOptions,
    ) -> None:
        from hfserve.skills.generation.engine import GenerationEngine, logits_width
        from hfserve.skills.generation.grammar import GrammarCompiler
        from hfserve.skills.generation.pieces import TokenPieces
        from hfserve.skills.generation.tool_parsers import detect_tool_format

        self.info = info
        self.model_id = model_id
        self.device = device
        self.dtype = dtype
        self._model = model
        # No one-thread pacing (``_threads.py``) here: the engine's decoding thread is the
        # process's only OpenMP pool, so its threads spin instead of sleeping between operators,
        # and two threads beat one at every batch size (chat c=1 94 vs 66 tok/s, c=4 245 vs 172,
        # 29M Llama, 2 vCPUs, 2026-12-02).
        self._tokenizer = tokenizer
        self._max_context = _context_length(model, tokenizer)
        self.engine = GenerationEngine(
            model,
            eos_token_ids=_eos_ids(model, tokenizer),
            options=options,
            max_context=self._max_context,
        )
        self._weights_bytes = _weights_bytes(model)
        # Prompt ids index the embedding table; its rows are the vocabulary a prompt may use.
        self._vocab_size = int(model.get_input_embeddings().num_embeddings)
        # The grammar masks must be as wide as the logits (which may differ from the embeddings).
        self._logits_width = logits_width(model)
        self._pieces = TokenPieces(tokenizer)
        self._ll_lock = threading.Lock()
        self._ll: Any = None
        self._grammars = GrammarCompiler(self.ll_tokenizer)
        template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        self.tool_format = detect_tool_format(template, getattr(model.config, "model_type", None))
        """The format of tool calls in this model's replies (a ``tool_parsers`` name)."""

    def ll_tokenizer(self) -> Any:
        """The ``llguidance.LLTokenizer`` of this model, built once (blocking, ~1 s: call it off
        the event loop). Its vocabulary is as wide as the logits and its EOS ids are the
        engine's, so its matchers' masks fit the sampling stage.

        Raises:
            InvalidRequestError: the tokenizer is not a fast (Rust) tokenizer, which llguidance
                needs for constrained decoding.
        """
        with self._ll_lock:
            if self._ll is None:
                import llguidance.hf

                try:
                    self._ll = llguidance.hf.from_tokenizer(
                        self._tokenizer,
                        n_vocab=self._logits_width,
                        eos_token=list(self.engine.eos_token_ids) or None,
                    )
                except ValueError as exc:
                    raise InvalidRequestError(
                        f"model {self.model_id!r} cannot do constrained decoding: {exc}",
                        param="response_format",
                    ) from exc
            return self._ll

    def _logprobs(
        self, token_ids: Sequence[int], steps: Sequence[StepLogprobs]
    ) -> list[TokenLogprob]:
        """Token texts and bytes for the engine's per-token logprobs."""
        out = []
        for token_id, step in zip(token_ids, steps, strict=False):
            text, data = self._pieces.piece(token_id)
            top = tuple(TokenLogprob(i, *self._pieces.piece(i), lp) for i, lp in step.top)
            out.append(TokenLogprob(token_id, text, data, step.logprob, top))
        return out

    @property
    def max_input_tokens(self) -> int:
        """The model's context length (prompt plus generation must fit in it)."""
        return self._max_context

    @property
    def vocab_size(self) -> int:
        """Prompt token ids must be in ``[0, vocab_size)`` (the embedding table's rows)."""
        return self._vocab_size

    @property
    def active_generations(self) -> int:
        """Generations being decoded or queued in the engine."""
        return self.engine.active

    def memory_bytes(self) -> int:
        """Weights, buffers and the engine's KV cache, in bytes."""
        return self._weights_bytes + self.engine.memory_bytes()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; a BOS token is added unless the text already starts with one."""
        bos = getattr(self._tokenizer, "bos_token", None)
        add_special = not (bos and text.startswith(bos))
        return list(self._tokenizer.encode(text, add_special_tokens=add_special))

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` as the model will see it."""
        return len(self.encode(text))

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt for ``messages`` (and ``tools``) from the chat template, ready for a reply.

        Raises:
            InvalidRequestError: the model has no chat template, the messages do not fit it,
                or (param ``tools``) its template does not render tools.
        """
        if not getattr(self._tokenizer, "chat_template", None):
            raise InvalidRequestError(
                f"model {self.model_id!r} has no chat template; use /v1/completions instead",
                param="messages",
            )
        text = self._apply_template(messages, tools)
        # A template that ignores tools would let the model answer without knowing them: the
        # prompt with tools must differ from the one without.
        if tools and text == self._apply_template(messages, None):
            raise InvalidRequestError(
                f"the chat template of model {self.model_id!r} does not render tools; serve it "
                "with a tool-capable template (hfserve serve --chat-template ALIAS=FILE)",
                param="tools",
            )
        return text

    def _apply_template(
        self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None
    ) -> str:
        from jinja2 import TemplateError

        try:
            text = self._tokenizer.apply_chat_template(
                [dict(m) for m in messages],
                tools=[dict(t) for t in tools] if tools else None,
                tokenize=False,
                add_generation_prompt=True,
            )
        except (TemplateError, ValueError, TypeError, KeyError) as exc:
            raise InvalidRequestError(f"cannot render the chat: {exc}", param="messages") from exc
        return str(text)

    async def compile_grammar(self, schema: Mapping[str, Any], *, param: str) -> CompiledGrammar:
        """The compiled grammar of a JSON schema for this model's vocabulary (cached, off-loop).

        Raises:
            InvalidRequestError: the schema is invalid, unsupported or too complex.
        """
        return await self._grammars.compile(schema, param=param)

    async def start(self) -> None:
        """Start the generation engine."""
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
        prompt_tokens = stream.prompt_tokens
        completion = 0
        pending: list[int] = []
        logprobs: list[TokenLogprob] | None = [] if request.logprobs is not None else None
        try:
            async for event in stream:
                completion += len(event.token_ids)
                pending.extend(event.token_ids)
                if logprobs is not None and event.logprobs is not None:
                    logprobs.extend(self._logprobs(event.token_ids, event.logprobs))
                text = detokenizer.push(event.token_ids)
                final = event.finish_reason is not None
                if final:
                    text += detokenizer.flush()
                out, hit = stops.feed(text, final=final)
                reason: FinishReason | None = "stop" if hit else event.finish_reason
                if out or reason is not None:
                    yield GenerationChunk(out, pending, reason, prompt_tokens, completion, logprobs)
                    pending = []
                    logprobs = [] if logprobs is not None else None
                if reason is not None:
                    return
        finally:
            await stream.aclose()


class TextGenerationSkill:
    """Causal language models (``*ForCausalLM``, ``*LMHeadModel``) for chat and completions."""

    info = SkillInfo(
        name="text-generation",
        task=TASK_GENERATION,
        architectures=(
            "*ForCausalLM",
            "*LMHeadModel",
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Phi3ForCausalLM",
            "GPT2LMHeadModel",
        ),
        endpoints=("/v1/chat/completions", "/v1/completions"),
        description="Chat and completions from causal LMs (folders, Hub ids or GGUF files), "
        "decoded together with transformers' continuous batching; each request keeps its own "
        "temperature, top_p, seed and stops.",
        version="1",
    )

    def load(
        self, model_path: str, device: str, dtype: str, options: RuntimeOptions
    ) -> LoadedTextGenerator:
        """Load tokenizer and model onto ``device`` in ``dtype`` (blocking).

        ``model_path`` may also be a GGUF file, or a folder holding one: it is converted once
        into the cache (``skills.gguf_cache``) and loaded from there.

        Raises:
            ModelLoadError: the files cannot be loaded as a causal LM.
        """
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from hfserve.skills._torch import torch_dtype
        from hfserve.skills.gguf_files import find_gguf

        model_id = model_path
        gguf = find_gguf(model_path)
        if gguf is not None:
            from hfserve.skills.gguf_cache import materialize

            # Dequantized once into the cache; this and every later start load that folder.
            model_path = str(materialize(gguf, dtype))

        weights_dtype = torch_dtype(dtype)  # resolved by hardware.choose_device, never "auto"
        trust = options.trust_remote_code
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust)
            if options.chat_template is not None:
                tokenizer.chat_template = options.chat_template
            model: Any = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=weights_dtype, trust_remote_code=trust
            )
            model.to(device)
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise ModelLoadError(f"cannot load {model_path} as a causal LM: {exc}") from exc
        model.eval()
        return LoadedTextGenerator(
            info=self.info,
            model_id=model_id,
            device=device,
            dtype=str(model.dtype).removeprefix("torch."),
            model=model,
            tokenizer=tokenizer,
            options=options,
        )


def _context_length(model: Any, tokenizer: Any) -> int:
    """The model's context: config positions, bounded by the tokenizer's own limit."""
    config = model.config.get_text_config()
    limit = declared_limit(
        getattr(config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    )
    if limit is None:
        raise ModelLoadError("the model declares no context length (max_position_embeddings)")
    return limit


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """EOS ids from the generation config and the tokenizer."""
    ids: list[int] = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.append(configured)
    elif configured is not None:
        ids.extend(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids


def _weights_bytes(model: Any) -> int:
    from hfserve.skills._torch import module_memory_bytes

    return module_memory_bytes(model)
