"""A Llama-shaped model with random weights, built from a config: realistic compute, no download.

Its byte-level BPE tokenizer is trained on the load generator's own vocabulary, so a prompt
of N benchmark words is close to N tokens, and it has a chat template for ``/chat``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hfserve.bench.workload import build_prompt

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIALS = ["<|endoftext|>", "<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"]

# ~30M parameters: 9 layers of 3.1M (GQA attention 0.8M + SwiGLU MLP 2.4M) plus embeddings.
FULL: dict[str, Any] = {
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 9,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
}
# For smoke runs: the same code path in milliseconds.
SMOKE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


def build_llama(path: Path, shape: dict[str, Any]) -> int:
    """Save a random-weights Llama and its tokenizer to ``path``; its parameter count."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = [build_prompt(seed, i, 64) for seed in range(3) for i in range(200)]
    bpe.train_from_iterator(corpus, vocab_size=2048, min_frequency=1, special_tokens=_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=bpe._tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        unk_token="<|endoftext|>",
        pad_token="<|pad|>",
        padding_side="left",
        model_max_length=2048,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())
