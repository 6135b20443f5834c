"""``/v1/chat/completions`` and ``/v1/completions``: one generation path, streamed or not.

Both routes turn their body into prompt token ids and then share everything else: limits,
``n`` choices, the continuous-batching engine, SSE streaming, usage, caching and metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Send

from hfserve.errors import HfServeError, InvalidRequestError
from hfserve.server.chat_output import ChoiceStream, OutputPlan, new_call_id, plan_output
from hfserve.server.errors import error_body, status_for
from hfserve.server.media import load_chat_inputs, refuse_images
from hfserve.server.openai_fields import IGNORED_FIELDS
from hfserve.server.requests import (
    cached_json,
    charge_tokens,
    load_model,
    now_ts,
    read_json,
    run_until_disconnect,
    server_state,
    sse_event,
)
from hfserve.server.routes.logprobs import chat_logprobs, completion_logprobs
from hfserve.server.schemas import ChatCompletionRequest, CompletionRequest, _Sampling, parse_body
from hfserve.server.state import ServerState
from hfserve.skills.base import (
    GenerationChunk,
    GenerationModel,
    GenerationRequest,
    MultimodalGenerationModel,
    StructuredGenerationModel,
    TokenLogprob,
)
from hfserve.skills.limits import check_token_ids

__all__ = ["chat_completions", "completions"]

log = logging.getLogger("hfserve.server")
Kind = Literal["chat", "text"]
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class _Choice:
    index: int
    text: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = None


@dataclass(frozen=True)
class _Job:
    """One generation request as the route sees it."""

    kind: Kind
    model_name: str
    model: GenerationModel
    body: _Sampling
    prompts: list[list[int]]
    max_new_tokens: int
    started: float
    plan: OutputPlan
    # Extra model inputs (pixel values) of a multimodal chat, shared by its ``n`` choices.
    media: Mapping[str, Any] | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def indices(self) -> range:
        """The choice indices: ``n`` per prompt."""
        return range(len(self.prompts) * self.body.n)

    def requests(self) -> list[tuple[int, GenerationRequest]]:
        """Every (choice index, engine request): ``n`` per prompt, seeds offset per choice.

        Each request gets its own grammar matcher, so call this once per generation.
        """
        body = self.body
        out = []
        for p_index, prompt in enumerate(self.prompts):
            for j in range(body.n):
                out.append(
                    (
                        p_index * body.n + j,
                        GenerationRequest(
                            prompt_ids=prompt,
                            max_new_tokens=self.max_new_tokens,
                            temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p,
                            seed=None if body.seed is None else body.seed + j,
                            stop=body.stop_sequences(),
                            ignore_eos=body.ignore_eos,
                            min_tokens=body.min_tokens,
                            top_k=max(body.top_k or 0, 0),
                            min_p=body.min_p or 0.0,
                            presence_penalty=body.presence_penalty or 0.0,
                            frequency_penalty=body.frequency_penalty or 0.0,
                            repetition_penalty=body.repetition_penalty or 1.0,
                            logit_bias=body.token_bias(),
                            logprobs=body.logprobs_count(),
                            grammar=self.plan.matcher(),
                            media=self.media,
                        ),
                    )
                )
        return out


async def chat_completions(request: Request) -> Response:
    """Create a chat completion (optionally streamed as server-sent events)."""
    started = time.perf_counter()
    state = server_state(request)
    body = parse_body(ChatCompletionRequest, await read_json(request))
    model = await load_model(state, request, body.model, GenerationModel, "/v1/chat/completions")  # type: ignore[type-abstract]
    output = body.output()
    media = None
    if isinstance(model, MultimodalGenerationModel):
        if output.tools is not None:
            raise InvalidRequestError(
                "tools are not supported for image-text-to-text models yet", param="tools"
            )
        inputs = await load_chat_inputs(body.messages, state.settings)
        prepared = await asyncio.to_thread(model.prepare_chat, inputs.messages, inputs.images)
        prompt_ids, media = prepared.prompt_ids, prepared.media
    else:
        refuse_images(body.messages, body.model)
        messages = [m.to_template() for m in body.messages]
        if output.tools is None:
            prompt = model.render_chat(messages)
        elif isinstance(model, StructuredGenerationModel):
            try:
                prompt = model.render_chat(messages, tools=output.tools)
            except InvalidRequestError as exc:
                # The skill speaks of tools; a legacy request sent them as ``functions``.
                if output.legacy and exc.param == "tools":
                    raise InvalidRequestError(exc.message, param="functions") from None
                raise
        else:
            raise InvalidRequestError(
                "this model does not support tools",
                param="functions" if output.legacy else "tools",
            )
        prompt_ids = model.encode(prompt)
    plan = await plan_output(output, model)
    job = _make_job(state, "chat", body, model, [prompt_ids], body.max_new_tokens(), started, plan)
    job = dataclasses.replace(job, media=media)
    return await _respond(request, state, job)


async def completions(request: Request) -> Response:
    """Create a text completion for one or more prompts (optionally streamed)."""
    started = time.perf_counter()
    state = server_state(request)
    body = parse_body(CompletionRequest, await read_json(request))
    prompts = body.prompts()
    if len(prompts) * body.n > state.settings.max_inputs:
        raise InvalidRequestError(
            f"too many prompts: {len(prompts)} x n={body.n} (this server allows {state.settings.max_inputs})",
            param="prompt",
        )
    model = await load_model(state, request, body.model, GenerationModel, "/v1/completions")  # type: ignore[type-abstract]
    ids: list[list[int]] = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids.append(model.encode(prompt))
            continue
        if not prompt:
            raise InvalidRequestError("prompt token lists must not be empty", param="prompt")
        check_token_ids(prompt, model.vocab_size, param="prompt", where="prompt ")
        ids.append(prompt)
    plan = await plan_output(body.output(), model)
    job = _make_job(state, "text", body, model, ids, body.max_tokens, started, plan)
    return await _respond(request, state, job)


# Image-text-to-text models run on the batched generate path (transformers' continuous batching
# takes no pixel inputs), which has temperature, top_p, seed, stops and lengths but not the
# tensor sampling stage's extras: refuse them rather than ignore them.
_GENERATE_PATH_UNSUPPORTED = (
    "logprobs",
    "top_logprobs",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "top_k",
    "min_p",
)


def _refuse_unsupported_on_generate_path(body: _Sampling) -> None:
    for name in _GENERATE_PATH_UNSUPPORTED:
        value = getattr(body, name, None)
        if value not in (None, False, 0, {}) and not (name == "repetition_penalty" and value == 1):
            raise InvalidRequestError(
                f"{name} is not supported for image-text-to-text models yet", param=name
            )


def _make_job(
    state: ServerState,
    kind: Kind,
    body: _Sampling,
    model: GenerationModel,
    prompts: list[list[int]],
    requested: int | None,
    started: float,
    plan: OutputPlan,
) -> _Job:
    if isinstance(model, MultimodalGenerationModel):
        _refuse_unsupported_on_generate_path(body)
    vocab = getattr(model, "vocab_size", None)
    if vocab is not None and any(i >= vocab for i in body.token_bias()):
        raise InvalidRequestError(
            f"logit_bias token ids must be in [0, {vocab}) for this model", param="logit_bias"
        )
    limit = state.settings.max_tokens_limit
    param = (
        "max_completion_tokens" if getattr(body, "max_completion_tokens", None) else "max_tokens"
    )
    if requested is not None and requested > limit:
        raise InvalidRequestError(
            f"{param} is {requested}, more than this server allows ({limit})", param=param
        )
    context = model.max_input_tokens
    prompt_limit = state.settings.max_prompt_tokens or context
    longest = max(len(p) for p in prompts)
    where = "messages" if kind == "chat" else "prompt"
    if longest > prompt_limit or longest >= context:
        raise InvalidRequestError(
            f"the {where} is {longest} tokens long; this model's maximum context length is "
            f"{context} tokens"
            + (
                f" and this server allows {prompt_limit} prompt tokens"
                if prompt_limit < context
                else ""
            ),
            param=where,
            code="context_length_exceeded",
        )
    if requested is None:
        max_new = min(limit, context - longest)
    elif longest + requested > context:
        raise InvalidRequestError(
            f"this model's maximum context length is {context} tokens, but you requested "
            f"{longest + requested} tokens ({longest} in the {where}, {requested} in the completion); "
            f"reduce the {where} or {param}",
            param=param,
            code="context_length_exceeded",
        )
    else:
        max_new = requested
    return _Job(kind, body.model, model, body, prompts, max_new, started, plan)


async def _respond(request: Request, state: ServerState, job: _Job) -> Response:
    body = job.body
    if body.stream:
        return _ClosingStreamingResponse(
            _sse(request, state, job), media_type="text/event-stream", headers=_SSE_HEADERS
        )

    async def produce() -> dict[str, Any]:
        choices = {index: _Choice(index) for index in job.indices()}
        try:
            await run_until_disconnect(request, _collect(state, job, choices))
        finally:
            # Whatever ended the request (done, hang-up, error, drain), the key pays for
            # every token generated for it: charging only on success would let a client
            # bypass its tokens/min budget by hanging up before the answer.
            await _charge(state, request, job.prompt_tokens + _generated(choices.values()))
        ordered = [choices[i] for i in sorted(choices)]
        return _final_body(job, ordered, _generated(ordered))

    deterministic = body.temperature == 0 and body.n == 1
    cache_request = (
        body.model_dump(mode="json", exclude={"stream", "stream_options", "seed", *IGNORED_FIELDS})
        | {"endpoint": job.kind}
        if deterministic
        else None
    )
    return await cached_json(state, job.model_name, cache_request, produce, _refresh)


def _refresh(payload: dict[str, Any]) -> dict[str, Any]:
    prefix = "chatcmpl-" if payload.get("object") == "chat.completion" else "cmpl-"
    for choice in payload.get("choices", ()):
        # A cached answer's tool calls get new ids too: clients key tool results by them.
        for call in (choice.get("message") or {}).get("tool_calls") or ():
            call["id"] = new_call_id()
    return payload | {"id": prefix + uuid.uuid4().hex, "created": now_ts()}


def _final_body(job: _Job, choices: Sequence[_Choice], completion: int) -> dict[str, Any]:
    usage = {
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": job.prompt_tokens + completion,
    }
    if job.kind == "chat":
        return {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": now_ts(),
            "model": job.model_name,
            "system_fingerprint": None,
            "choices": [_chat_choice(job.plan, c) for c in choices],
            "usage": usage,
        }
    return {
        "id": "cmpl-" + uuid.uuid4().hex,
        "object": "text_completion",
        "created": now_ts(),
        "model": job.model_name,
        "system_fingerprint": None,
        "choices": [
            {
                "index": c.index,
                "text": "".join(c.text),
                "logprobs": None if c.logprobs is None else completion_logprobs(c.logprobs),
                "finish_reason": c.finish_reason,
            }
            for c in choices
        ],
        "usage": usage,
    }


def _chat_choice(plan: OutputPlan, choice: _Choice) -> dict[str, Any]:
    message, finish = plan.message("".join(choice.text), choice.finish_reason)
    logprobs = None if choice.logprobs is None else chat_logprobs(choice.logprobs)
    return {
        "index": choice.index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish,
    }


class _ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that always closes its body generator when streaming stops.

    Starlette leaves a generator suspended at ``yield`` when ``send`` fails (the client hung
    up), and its ``finally`` then runs only whenever the garbage collector finalizes it; the
    stream's token charge must not wait on that.
    """

    async def stream_response(self, send: Send) -> None:
        """Stream the body, closing the generator on every exit."""
        iterator = self.body_iterator
        if isinstance(iterator, AsyncGenerator):
            async with contextlib.aclosing(iterator):
                await super().stream_response(send)
        else:  # pragma: no cover - every hfserve stream is an async generator
            await super().stream_response(send)


def _generated(choices: Iterable[_Choice]) -> int:
    return sum(c.completion_tokens for c in choices)


async def _charge(state: ServerState, request: Request, tokens: int) -> None:
    """Debit ``tokens`` from the key's budget, even while the request is being cancelled."""
    # Shielded: on a hang-up or at the end of a drain this runs inside a cancelled scope,
    # where an unshielded await (a Redis round trip) would be cancelled before it debits.
    with anyio.CancelScope(shield=True):
        await charge_tokens(state, request, tokens)


async def _collect(state: ServerState, job: _Job, choices: dict[int, _Choice]) -> None:
    """Fill ``choices`` as chunks arrive (the caller reads the counts even if this is cancelled)."""
    async for index, chunk in _merged(state, job):
        choice = choices[index]
        choice.text.append(chunk.text)
        choice.completion_tokens = chunk.completion_tokens
        if chunk.logprobs is not None:
            choice.logprobs = (choice.logprobs or []) + chunk.logprobs
        if chunk.finish_reason is not None:
            choice.finish_reason = chunk.finish_reason


async def _merged(state: ServerState, job: _Job) -> AsyncIterator[tuple[int, GenerationChunk]]:
    """Chunks of every choice as they come; records TTFT/ITL/token metrics; cancels on exit."""
    metrics, name = state.metrics, job.model_name
    metrics.prompt_tokens.labels(name).inc(job.prompt_tokens)
    first = True
    last_at: dict[int, float] = {}
    async for index, chunk in _interleave(job):
        if chunk.token_ids:
            now = time.perf_counter()
            if first:
                metrics.ttft.labels(name).observe(now - job.started)
                first = False
            if index in last_at:
                metrics.itl.labels(name).observe((now - last_at[index]) / len(chunk.token_ids))
            last_at[index] = now
            metrics.generation_tokens.labels(name).inc(len(chunk.token_ids))
        yield index, chunk


async def _interleave(job: _Job) -> AsyncIterator[tuple[int, GenerationChunk]]:
    pairs = job.requests()
    if len(pairs) == 1:
        index, req = pairs[0]
        async with contextlib.aclosing(job.model.generate(req)) as stream:
            async for chunk in stream:
                yield index, chunk
        return
    queue: asyncio.Queue[tuple[int, GenerationChunk] | BaseException | None] = asyncio.Queue()

    async def pump(index: int, req: GenerationRequest) -> None:
        try:
            async with contextlib.aclosing(job.model.generate(req)) as stream:
                async for chunk in stream:
                    await queue.put((index, chunk))
        except Exception as exc:
            await queue.put(exc)
        finally:
            await queue.put(None)

    tasks = [asyncio.ensure_future(pump(i, r)) for i, r in pairs]
    remaining = len(tasks)
    try:
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _sse(request: Request, state: ServerState, job: _Job) -> AsyncIterator[bytes]:
    body = job.body
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chat = job.kind == "chat"
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = now_ts()
    obj = "chat.completion.chunk" if chat else "text_completion"
    completion: dict[int, int] = {}
    offsets: dict[int, int] = {}
    charged = False

    def event(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        payload: dict[str, Any] = {
            "id": rid,
            "object": obj,
            "created": created,
            "model": job.model_name,
            "system_fingerprint": None,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = usage
        return sse_event(payload)

    def encode_logprobs(index: int, items: list[TokenLogprob] | None) -> dict[str, Any] | None:
        if items is None:
            return None
        if chat:
            return chat_logprobs(items)
        start = offsets.get(index, 0)
        offsets[index] = start + sum(len(item.token) for item in items)
        return completion_logprobs(items, start)

    def text_choice(
        index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def chat_choice(
        index: int, delta: dict[str, Any], finish: str | None, logprobs: dict[str, Any] | None
    ) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}

    streams: dict[int, ChoiceStream] = {i: job.plan.stream() for i in job.indices()}
    try:
        if chat:
            role = {"role": "assistant", "content": ""}
            yield event([chat_choice(i, role, None, None) for i in job.indices()])
        async for index, chunk in _merged(state, job):
            completion[index] = chunk.completion_tokens
            # A chunk's logprobs ride on its first event: the text, else the finish.
            logprobs = encode_logprobs(index, chunk.logprobs)
            if not chat:
                if chunk.text or chunk.finish_reason is None:
                    yield event([text_choice(index, chunk.text, None, logprobs)])
                    logprobs = None
                if chunk.finish_reason is not None:
                    yield event([text_choice(index, "", chunk.finish_reason, logprobs)])
                continue
            stream = streams[index]
            deltas = stream.feed(chunk.text)
            if not deltas and chunk.finish_reason is None:
                # An empty step still shows the client that tokens flow (held tool-call text
                # does not, unless its logprobs must go out).
                if job.plan.request.tool_mode is None:
                    deltas = [{"content": ""}]
                elif logprobs is not None:
                    deltas = [{}]
            if chunk.finish_reason is not None:
                last, finish = stream.finish(chunk.finish_reason)
                deltas += last
            for delta in deltas:
                yield event([chat_choice(index, delta, None, logprobs)])
                logprobs = None
            if chunk.finish_reason is not None:
                yield event([chat_choice(index, {}, finish, logprobs)])
        total = sum(completion.values())
        # Charged before the usage event and [DONE], so a client's next request sees it.
        charged = True
        await _charge(state, request, job.prompt_tokens + total)
        if include_usage:
            yield event(
                [],
                {
                    "prompt_tokens": job.prompt_tokens,
                    "completion_tokens": total,
                    "total_tokens": job.prompt_tokens + total,
                },
            )
        yield b"data: [DONE]\n\n"
    except HfServeError as exc:
        status, kind = status_for(exc)
        log.warning("stream %s ended with %s (%d): %s", rid, exc.code, status, exc.message)
        yield _error_event(error_body(exc.message, kind, param=exc.param, code=exc.code))
    except Exception:
        log.exception("stream %s failed", rid)
        yield _error_event(
            error_body(
                "The server had an error while generating; the stream ended early.",
                "server_error",
                code="internal_error",
            )
        )
    finally:
        # A hang-up (GeneratorExit or cancellation), an error or the end of a drain: the key
        # still pays for what was generated before it.
        if not charged:
            await _charge(state, request, job.prompt_tokens + sum(completion.values()))


def _error_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\ndata: [DONE]\n\n"
