"""What the load generator learned from one request."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RequestRecord"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """The outcome and timings of one request; times are seconds on the runner's clock.

    ``ttft`` is ``None`` unless the request streamed and received a token. ``itl`` holds the
    gaps between successive streamed chunks that carried tokens. For a failed request,
    ``error`` names what failed (``HTTP 503``, ``ConnectError``, ...) and ``message`` says why.
    """

    ok: bool
    start: float
    latency: float
    ttft: float | None = None
    itl: tuple[float, ...] = ()
    input_tokens: int = 0
    output_tokens: int = 0
    status: int | None = None
    error: str | None = None
    message: str | None = None

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first, as ``vllm bench serve`` defines it.

        ``(latency - ttft) / (output_tokens - 1)``; ``None`` without a TTFT or with fewer
        than two output tokens.
        """
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.latency - self.ttft) / (self.output_tokens - 1)
