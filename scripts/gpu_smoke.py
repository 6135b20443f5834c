"""GPU smoke check: device selection, dtype and the real server path on a CUDA machine.

Run on a machine with an NVIDIA GPU (not part of CI, which has none):

    HF_HUB_OFFLINE=1 python scripts/gpu_smoke.py

It builds the tiny test models, probes the hardware, serves them through ``create_app`` with
``device=auto`` and checks that they landed on ``cuda:0`` in the expected dtype, that greedy
chat equals ``model.generate`` on the GPU, and that embeddings work.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import torch
    from starlette.testclient import TestClient
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hfserve.hardware import probe
    from hfserve.server.app import create_app
    from hfserve.settings import Settings
    from tests.fixtures.tiny_models import build_tiny_models

    report = probe()
    print(
        json.dumps(
            {"choice": report.to_dict()["choice"], "cuda": [d.name for d in report.cuda_devices]}
        )
    )
    assert report.choice.device == "cuda:0", report.choice
    expected_dtype = "bfloat16" if report.cuda_devices[0].bf16_supported else "float16"
    assert report.choice.dtype == expected_dtype, report.choice

    tiny = build_tiny_models(Path(tempfile.mkdtemp()) / "tiny")
    settings = Settings.load(None, models=[f"llm={tiny.llama}", f"emb={tiny.bert}"], auth=False)
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 300
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.1)
        state = client.app.state.hfserve  # type: ignore[attr-defined]
        llm = state.loader.cache.peek("llm")
        emb = state.loader.cache.peek("emb")
        print("llm", llm.device, llm.dtype, "emb", emb.device, emb.dtype)
        assert llm.device == "cuda:0"
        assert llm.dtype == expected_dtype
        assert emb.device == "cuda:0"
        chat = {"model": "llm", "messages": [{"role": "user", "content": "hello world"}]}
        body = client.post(
            "/v1/chat/completions",
            json=chat | {"max_tokens": 8, "temperature": 0},
        ).json()
        print("chat", body["usage"], repr(body["choices"][0]["message"]["content"]))

        tok = AutoTokenizer.from_pretrained(tiny.llama)
        ref = AutoModelForCausalLM.from_pretrained(
            tiny.llama, dtype=getattr(torch, expected_dtype)
        ).to("cuda:0")
        prompt = llm.encode(llm.render_chat(chat["messages"]))
        out = ref.generate(
            torch.tensor([prompt], device="cuda:0"),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        # hfserve never emits a dangling partial UTF-8 character at the end; generate does.
        ref_text = tok.decode(out[0, len(prompt) :], skip_special_tokens=True).rstrip("\ufffd")
        print("generate", repr(ref_text))
        assert body["choices"][0]["message"]["content"] == ref_text, (
            "greedy on GPU differs from generate"
        )

        with client.stream(
            "POST",
            "/v1/chat/completions",
            json=chat | {"max_tokens": 16, "stream": True, "ignore_eos": True},
        ) as r:
            events = [line for line in r.iter_lines() if line]
        assert events[-1] == "data: [DONE]", events[-2:]
        vectors = client.post("/v1/embeddings", json={"model": "emb", "input": ["a", "b"]}).json()
        assert len(vectors["data"]) == 2
        print(
            "metrics ok:",
            "hfserve_time_to_first_token_seconds_count" in client.get("/metrics").text,
        )
    print("GPU SMOKE OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
