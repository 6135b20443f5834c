"""A Whisper-shaped model with random weights, built from a config: realistic compute, offline.

Its byte-level BPE is trained on the load generator's words, with Whisper's special tokens
after the text vocabulary (as in Whisper). The config's vocabulary may be larger than the
tokenizer (whisper-tiny's 51,865): ids beyond the tokenizer are suppressed in generation, so
every decoding step still computes the full output layer but only writes decodable tokens.
"""

from __future__ import annotations

import io
import math
import struct
import wave
from pathlib import Path
from typing import Any

from hfserve.bench.workload import build_prompt

_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
]

# whisper-tiny: 39M parameters.
FULL: dict[str, Any] = {"d_model": 384, "layers": 4, "heads": 6, "ffn": 1536, "vocab": 51865}
# For smoke runs: the same code path in milliseconds.
SMOKE: dict[str, Any] = {"d_model": 32, "layers": 1, "heads": 2, "ffn": 64, "vocab": 0}


def build_whisper(path: Path, shape: dict[str, Any], max_new_tokens: int) -> None:
    """Save a random-weights Whisper of ``shape`` (``vocab`` 0: the tokenizer's size) to ``path``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

    path.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([build_prompt(3, i, 32) for i in range(500)], vocab_size=2000)
    bpe.save_model(str(path))
    eot = _SPECIALS[0]
    tokenizer = WhisperTokenizer(
        vocab=str(path / "vocab.json"),
        merges=str(path / "merges.txt"),
        unk_token=eot,
        bos_token=eot,
        eos_token=eot,
        pad_token=eot,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": _SPECIALS})
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _SPECIALS}
    vocab = max(shape["vocab"], len(tokenizer))
    config = WhisperConfig(
        vocab_size=vocab,
        d_model=shape["d_model"],
        encoder_layers=shape["layers"],
        decoder_layers=shape["layers"],
        encoder_attention_heads=shape["heads"],
        decoder_attention_heads=shape["heads"],
        encoder_ffn_dim=shape["ffn"],
        decoder_ffn_dim=shape["ffn"],
        num_mel_bins=80,
        max_target_positions=448,
        decoder_start_token_id=ids["<|startoftranscript|>"],
        eos_token_id=ids[eot],
        pad_token_id=ids[eot],
        bos_token_id=ids[eot],
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    generation = GenerationConfig.from_model_config(config)
    generation._from_model_config = False
    generation.decoder_start_token_id = ids["<|startoftranscript|>"]
    generation.no_timestamps_token_id = ids["<|notimestamps|>"]
    generation.prev_sot_token_id = ids["<|startofprev|>"]
    generation.lang_to_id = {"<|en|>": ids["<|en|>"]}
    generation.task_to_id = {"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]}
    generation.is_multilingual = True
    generation.max_length = max_new_tokens
    # Control tokens and ids the tokenizer cannot decode stay out of the text; the end of
    # text is allowed after the first token (random weights rarely pick it).
    generation.suppress_tokens = [ids[t] for t in _SPECIALS[1:]] + list(
        range(len(tokenizer), vocab)
    )
    generation.begin_suppress_tokens = [ids[eot]]
    model.generation_config = generation
    model.save_pretrained(path)
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(), tokenizer=tokenizer
    ).save_pretrained(path)


def tone_wav(seconds: float, rate: int = 16000) -> bytes:
    """A 16-bit mono WAV of a 440 Hz tone, written with the ``wave`` module."""
    frames = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * 440 * i / rate)))
        for i in range(int(seconds * rate))
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames)
    return buf.getvalue()
