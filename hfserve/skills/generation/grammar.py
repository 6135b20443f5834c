"""Grammars for structured output: JSON schemas compiled by llguidance, once per schema.

Why llguidance (and not xgrammar): both are maintained and have CPU kernels, but xgrammar pulls
triton and torch builds on Linux, while llguidance is one small Rust wheel whose mask
computation runs in parallel without the GIL. Every constraint hfserve offers - ``json_object``,
``json_schema``, and tool calls (a JSON schema built by
:mod:`hfserve.skills.generation.forced_calls`) - is a JSON schema, so one compiler serves all.

The default grammar is *compact* JSON (``whitespace_flexible: false``): no free whitespace
between tokens, so a small model cannot spend its whole ``max_tokens`` on spaces and newlines.

Compiling builds the lexer over the model's vocabulary, which can take from milliseconds to
seconds, so it runs in a worker thread, bounded both by llguidance's own fuel limits (the real
bound on work) and by a wall-clock timeout (the bound the client sees). Compiled grammars are
kept in an LRU keyed by the schema's compact JSON text, and each generation gets a fresh
matcher of its own (a matcher holds one generation's parse state).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hfserve.errors import InvalidRequestError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = ["CompiledGrammar", "GrammarCompiler", "schema_key"]

# Options of llguidance's JSON compiler: compact separators and no free whitespace.
_JSON_DEFAULTS: JsonCompileOptions = {"whitespace_flexible": False}
_DEFAULT_TIMEOUT = 10.0
_DEFAULT_ENTRIES = 128
# A fraction of llguidance's defaults: enough for any schema a client reasonably sends,
# small enough that a pathological one fails in well under a second instead of hanging.
_LIMITS: dict[str, int] = {
    "initial_lexer_fuel": 1_000_000,
    "max_grammar_size": 200_000,
    "max_lexer_states": 100_000,
}


def schema_key(schema: Mapping[str, Any]) -> str:
    """The cache key of a schema: its compact JSON text.

    Keys keep their order (no ``sort_keys``): the grammar emits properties in the order the
    schema declares them, so two schemas that differ only in order are different grammars.
    """
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


class CompiledGrammar:
    """A validated grammar for one schema; :meth:`matcher` makes one per generation."""

    def __init__(self, grammar: str, tokenizer: Any, limits: Any) -> None:
        self.grammar = grammar
        self._tokenizer = tokenizer
        self._limits = limits

    def matcher(self) -> Any:
        """A fresh ``llguidance.LLMatcher`` at the start of the grammar."""
        from llguidance import LLMatcher

        return LLMatcher(self._tokenizer, self.grammar, limits=self._limits, log_level=0)


class GrammarCompiler:
    """Compiles JSON schemas for one model's tokenizer, off the event loop, with an LRU.

    Args:
        tokenizer: returns the model's ``llguidance.LLTokenizer`` (blocking, called in a worker
            thread; it is expected to cache its result).
        max_entries: compiled grammars kept.
        timeout: seconds a compile may take before the request gets a 400.
    """

    def __init__(
        self,
        tokenizer: Callable[[], Any],
        *,
        max_entries: int = _DEFAULT_ENTRIES,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> None:
        self._tokenizer = tokenizer
        self._max_entries = max_entries
        self._timeout = timeout
        self._cache: OrderedDict[str, CompiledGrammar] = OrderedDict()
        # One compile per schema at a time: concurrent requests with the same schema share it.
        self._pending: dict[str, asyncio.Future[CompiledGrammar]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    async def compile(self, schema: Mapping[str, Any], *, param: str) -> CompiledGrammar:
        """The compiled grammar for ``schema`` (cached).

        Raises:
            InvalidRequestError: the schema is invalid, unsupported or too complex; ``param``
                names the request field it came from.
        """
        key = schema_key(schema)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._build(key, dict(schema), param))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._settle(key, done))
        # Shielded: a client that goes away must not cancel a compile others wait for.
        return await asyncio.shield(pending)

    def _settle(self, key: str, done: asyncio.Future[CompiledGrammar]) -> None:
        self._pending.pop(key, None)
        if not done.cancelled():
            # Retrieved here so an error nobody waits for any more is not logged as lost.
            done.exception()

    async def _build(self, key: str, schema: dict[str, Any], param: str) -> CompiledGrammar:
        try:
            async with asyncio.timeout(self._timeout):
                compiled = await asyncio.to_thread(self._compile_blocking, schema, param)
        except TimeoutError:
            raise InvalidRequestError(
                f"the schema took longer than {self._timeout:g}s to compile; simplify it",
                param=param,
            ) from None
        self._cache[key] = compiled
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return compiled

    def _compile_blocking(self, schema: dict[str, Any], param: str) -> CompiledGrammar:
        from llguidance import LLMatcher, LLParserLimits

        tokenizer = self._tokenizer()
        limits = LLParserLimits(
            initial_lexer_fuel=_LIMITS["initial_lexer_fuel"],
            max_grammar_size=_LIMITS["max_grammar_size"],
            max_lexer_states=_LIMITS["max_lexer_states"],
        )
        try:
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_DEFAULTS)
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"invalid JSON schema: {exc}", param=param) from None
        is_error, messages = LLMatcher.validate_grammar_with_warnings(
            grammar, tokenizer, limits=limits
        )
        if is_error:
            raise InvalidRequestError(
                f"unsupported JSON schema: {_first_line(messages[0])}", param=param
            )
        return CompiledGrammar(grammar, tokenizer, limits)


def _first_line(message: str) -> str:
    """llguidance's errors can carry the whole grammar after the first line; keep the reason."""
    return message.strip().splitlines()[0] if message.strip() else "rejected by the compiler"
