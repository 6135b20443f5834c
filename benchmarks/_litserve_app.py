"""LitServe serving all-MiniLM-L6-v2 on ``/v1/embeddings`` with dynamic batching (a peer).

Usage: ``python _litserve_app.py PORT MODEL_PATH MAX_BATCH_SIZE``. LitServe starts an API
server process and an inference worker; ``embeddings.py`` stops them as one process group.
"""

from __future__ import annotations

import sys
from typing import Any

import litserve as ls
from sentence_transformers import SentenceTransformer


class MiniLMAPI(ls.LitAPI):  # type: ignore[misc]
    """One sentence per request in, one vector out; LitServe batches requests for predict."""

    def __init__(self, model_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_path = model_path

    def setup(self, device: str) -> None:
        """Load the model once per worker."""
        self.model = SentenceTransformer(self.model_path, device="cpu")

    def decode_request(self, request: Any, context: Any = None) -> str:
        """The request's one input sentence."""
        text = request.input
        return text if isinstance(text, str) else str(text[0])

    def predict(self, sentences: list[str], context: Any = None) -> list[list[float]]:
        """Encode the whole batch in one call, as the offline ceiling does."""
        return [v.tolist() for v in self.model.encode(sentences, batch_size=len(sentences))]

    def encode_response(self, output: list[float], context: Any = None) -> dict[str, Any]:
        """The OpenAI embeddings shape (the spec adds the envelope)."""
        return {"embeddings": [output], "prompt_tokens": 0, "total_tokens": 0}


if __name__ == "__main__":
    port, model_path, batch = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    api = MiniLMAPI(
        model_path,
        max_batch_size=batch,
        batch_timeout=0.005,
        spec=ls.OpenAIEmbeddingSpec(),
    )
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, log_level="warning", generate_client_file=False)
