"""One ``Settings`` object for the whole program.

Precedence: flag (explicit keyword) > environment ``HFSERVE_*`` > config file
(``hfserve.toml``) > default. The CLI builds it once with :meth:`Settings.load` and passes
it down; the server and the Kubernetes renderer read the same object.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from hfserve.errors import ConfigError
from hfserve.logs import LogFormat
from hfserve.paths import default_cache_dir, default_keys_file

__all__ = [
    "ENV_PREFIX",
    "Settings",
    "default_cache_dir",
    "default_keys_file",
    "is_loopback",
    "parse_size",
]

ENV_PREFIX = "HFSERVE_"
_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "hfserve_config_file", default=None
)
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}


def parse_size(value: str | int | float) -> int:
    """Parse a byte size such as ``512MiB``, ``4GB`` or ``1048576`` into bytes.

    Raises:
        ValueError: the text is not a size.
    """
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    match = _SIZE_RE.match(value)
    if match is None:
        raise ValueError(f"not a size: {value!r} (try 512MiB, 4GiB or a number of bytes)")
    number, unit = match.group(1), (match.group(2) or "").lower()
    return int(float(number) * _UNITS[unit])


class _TomlFileSource(PydanticBaseSettingsSource):
    """Reads the config file named by :meth:`Settings.load` (``[hfserve]`` table or top level)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # pragma: no cover - __call__ does the work

    def __call__(self) -> dict[str, Any]:
        path = _CONFIG_FILE.get()
        if path is None:
            return {}
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        table = data.get("hfserve", data)
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [hfserve] must be a table")
        known = set(Settings.model_fields)
        unknown = sorted(k for k in table if k.replace("-", "_") not in known)
        if unknown:
            raise ConfigError(f"config file {path}: unknown setting(s): {', '.join(unknown)}")
        return {k.replace("-", "_"): v for k, v in table.items()}


class Settings(BaseSettings):
    """Every knob of hfserve; each field is also ``HFSERVE_<NAME>`` and a config-file key."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="forbid", case_sensitive=False
    )

    # --- models -----------------------------------------------------------------------------
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Models to serve as [ALIAS=]PATH_OR_ID; requests name them by alias. "
        "Empty: the built-in offline demo models.",
    )
    models_dir: Path | None = Field(
        None,
        description="Folder whose sub-folders (with a config.json) and .gguf files are offered "
        "by name, loaded on first request and unloaded by LRU, --cache-memory and "
        "model_idle_ttl.",
    )
    task: str | None = Field(None, description="Force the skill task for every --model.")
    chat_templates: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Chat templates as ALIAS=FILE (a Jinja file) replacing a served model's "
        "own, e.g. a tool-capable one.",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Weights dtype; auto picks float16/bfloat16 on GPUs, float32 on CPU."
    )
    max_loaded_models: int = Field(4, ge=1, description="Most models held in memory at once.")
    cache_memory: int = Field(
        0, ge=0, description="Byte budget for loaded models (e.g. 8GiB); 0 means no byte limit."
    )
    model_idle_ttl: float = Field(
        0,
        ge=0,
        description="Seconds an unpinned model may sit unused before it is unloaded; 0 = never.",
    )
    load_timeout: float = Field(600.0, gt=0, description="Seconds a model load may take.")
    breaker_failures: int = Field(
        3, ge=1, description="Failed loads before a model is refused fast."
    )
    breaker_recovery: float = Field(
        30.0, gt=0, description="Seconds before a failing model is retried."
    )
    trust_remote_code: bool = Field(False, description="Allow models that ship their own code.")

    # --- server -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    workers: int = Field(1, ge=1, description="uvicorn worker processes.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="Log level."
    )
    log_format: LogFormat = Field(
        "text", description="Log lines as text, or as one JSON object per line (log pipelines)."
    )
    access_log: bool = Field(True, description="Structured access log, one line per request.")
    grace_period: float = Field(
        30.0, ge=0, description="Seconds in-flight requests get to finish on SIGTERM."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed CORS origins; empty disables CORS."
    )

    # --- auth and limits --------------------------------------------------------------------
    keys_file: Path = Field(default_factory=default_keys_file, description="API keys file.")
    auth: bool | None = Field(
        None, description="Require API keys; default: on when the keys file has keys."
    )
    public_metrics: bool = Field(True, description="Serve /metrics without an API key.")
    default_rpm: int = Field(
        0, ge=0, description="Requests/min per key when the key sets none; 0 = unlimited."
    )
    default_tpm: int = Field(
        0, ge=0, description="Tokens/min per key when the key sets none; 0 = unlimited."
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body.")
    max_tokens_limit: int = Field(4096, ge=1, description="Largest max_tokens a request may ask.")
    max_inputs: int = Field(
        2048, ge=1, description="Most inputs in one embeddings/classification request."
    )
    max_documents: int = Field(
        1000, ge=1, description="Most documents in one /v1/rerank or /v1/score request."
    )
    max_audio_bytes: int = Field(
        25 * 1024 * 1024,
        ge=1024,
        description="Largest audio upload (e.g. 25MiB, OpenAI's limit); replaces max_body_bytes "
        "on the /v1/audio endpoints.",
    )
    max_audio_seconds: float = Field(
        1800.0, gt=0, description="Longest audio a transcription request may hold (seconds)."
    )
    max_prompt_tokens: int = Field(
        0, ge=0, description="Longest prompt in tokens; 0 = the model's context."
    )

    # --- images in chat ---------------------------------------------------------------------
    max_images_per_request: int = Field(
        8, ge=0, description="Most image parts in one chat request (0 refuses images)."
    )
    allow_remote_media: bool = Field(
        False,
        description="Fetch http(s) image URLs in chat messages (public addresses only); "
        "off: only data: URLs are accepted.",
    )
    remote_media_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1024, description="Largest remote image a request may fetch."
    )
    remote_media_timeout: float = Field(
        10.0, gt=0, description="Seconds a remote image fetch may take, redirects included."
    )

    # --- batching and generation ------------------------------------------------------------
    max_batch_size: int = Field(
        32, ge=1, description="Most items in one embeddings/classification batch."
    )
    max_batch_tokens: int = Field(16384, ge=1, description="Most tokens in one batch.")
    max_wait_ms: float = Field(
        5.0, ge=0, description="How long a forming batch may linger for more items (ms)."
    )
    max_queue: int = Field(256, ge=1, description="Queued requests per model before 503.")
    max_concurrent_generations: int = Field(
        16, ge=1, description="Generations decoded together per model (continuous batching)."
    )
    direct_decode: bool = Field(
        True,
        description="On the CPU, generations decode together with the model's own forward over "
        "one padded KV cache, joining and leaving between steps (about twice the tokens/s of "
        "continuous batching for small models, and as fast as plain generate alone). false: "
        "transformers' continuous batching runs every step. Accelerators always use it.",
    )
    torch_threads: int = Field(
        0,
        ge=0,
        description="Threads torch uses for CPU inference (OMP/MKL_NUM_THREADS, set before "
        "torch loads), per worker. 0 (auto): OMP_NUM_THREADS when set, else the usable CPUs "
        "(affinity capped by the cgroup CPU quota, so a container's limit counts) shared out "
        "among the workers. hfserve also sets OMP_WAIT_POLICY=PASSIVE (with GOMP_SPINCOUNT=10000, "
        "a short spin before sleeping) unless OMP_WAIT_POLICY is set: spinning OpenMP threads "
        "take the CPU from the event loop (docs/operations.md, CPU threads).",
    )

    # --- response cache ---------------------------------------------------------------------
    response_cache: bool = Field(True, description="Cache deterministic responses.")
    response_cache_ttl: float = Field(300.0, gt=0, description="Response cache TTL (seconds).")
    response_cache_memory: int = Field(
        64 * 1024 * 1024, ge=0, description="Response cache byte budget."
    )

    # --- redis ------------------------------------------------------------------------------
    redis_url: str | None = Field(None, description="Redis URL for shared state across replicas.")
    redis_timeout_ms: float = Field(50.0, gt=0, description="Per-operation Redis timeout (ms).")
    rate_limit_fail_open: bool = Field(
        True, description="When Redis is down: admit requests (open) or refuse them (closed)."
    )

    @field_validator("models", "cors_origins", "chat_templates", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "cache_memory",
        "response_cache_memory",
        "max_body_bytes",
        "max_audio_bytes",
        "remote_media_max_bytes",
        mode="before",
    )
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return parse_size(value)
        return value

    @field_validator("keys_file", "models_dir", mode="before")
    @classmethod
    def _expand_path(cls, value: Any) -> Any:
        if isinstance(value, str):
            return Path(value).expanduser()
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags (init kwargs) > environment > config file > defaults."""
        return init_settings, env_settings, _TomlFileSource(settings_cls)

    @classmethod
    def load(cls, config_file: Path | str | None = None, **overrides: Any) -> Settings:
        """Build settings from flags (``overrides``; ``None`` means not given), env and file.

        Raises:
            ConfigError: a value is invalid or the config file cannot be read.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        token = _CONFIG_FILE.set(Path(config_file).expanduser() if config_file else None)
        try:
            return cls(**given)
        except ValidationError as exc:
            raise ConfigError(_describe_validation_error(exc)) from None
        finally:
            _CONFIG_FILE.reset(token)

    def to_env(self) -> dict[str, str]:
        """The settings that differ from defaults as ``HFSERVE_*`` variables (for ConfigMaps)."""
        defaults = Settings.model_construct()
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in {"keys_file"} or value == getattr(defaults, name, object()):
                continue
            env[ENV_PREFIX + name.upper()] = _env_text(value)
        return env

    def auth_status(self, key_count: int) -> str:
        """One line saying whether auth is on and why (startup banner, logs).

        Args:
            key_count: the keys in ``keys_file`` (revoked and expired ones count: they keep
                auth on, see ``KeyStore.has_keys``).
        """
        if self.auth is False:
            return "auth off: --no-auth"
        if key_count:
            return f"auth on: {key_count} key{'s' if key_count != 1 else ''} in {self.keys_file}"
        if self.auth:
            return f"auth on: no keys yet in {self.keys_file}, every request is refused"
        return "auth off: no keys yet (hfserve keys create)"

    def check_exposure(self, key_count: int) -> None:
        """Refuse to serve on a non-loopback address with no keys unless auth was turned off.

        Raises:
            ConfigError: ``host`` is reachable from other machines, the keys file holds no
                key, and ``--no-auth`` (``auth = false``) was not given.
        """
        if self.auth is None and not key_count and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve on {self.host} without API keys: anyone who can reach it "
                "could use it. Create a key (hfserve keys create), bind 127.0.0.1, or pass "
                "--no-auth to serve without keys on purpose",
                param="host",
            )


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (``localhost``, ``127.x``, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if value is None:
        return ""
    return str(value)


def _describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        parts.append(f"{loc}: {err['msg']}")
    return "invalid settings: " + "; ".join(parts)
