"""A file-backed store of API keys: only SHA-256 hashes are kept, never the keys themselves.

The file is JSON (``{"version": 1, "keys": [...]}``), written atomically (temp file in the same
directory + ``os.replace``) with mode 0600, under an advisory ``flock`` on a sibling ``.lock``
file, so ``hfserve keys`` can write while a server reads. A server notices changes (a revoked
key) within ``reload_interval`` seconds by comparing the file's (mtime_ns, size, inode).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from hfserve.core.clock import Clock, WallClock
from hfserve.errors import AuthError, ConfigError, KeyNotFoundError

__all__ = ["KEY_PREFIX", "ApiKey", "KeyState", "KeyStore", "hash_key"]

KEY_PREFIX = "hf-"
_FILE_VERSION = 1
_ID_PREFIX = "key_"
_MAX_NAME = 200
# Compared against when a presented key matches nothing, so unknown keys cost the same compare.
_NO_MATCH = "0" * 64

KeyState = Literal["active", "revoked", "expired"]
_Signature = tuple[int, int, int]


def hash_key(key: str) -> str:
    """The SHA-256 hex digest under which a key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One API key's record: its id, name, limits and lifecycle; never the key itself."""

    id: str
    name: str
    last4: str
    key_hash: str
    rpm: int | None
    tpm: int | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def state(self, now: float) -> KeyState:
        """Whether the key is active, revoked or expired at time ``now`` (epoch seconds)."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def to_public(self, now: float) -> dict[str, Any]:
        """The fields safe to show or return over an API (no key, no hash)."""
        return {
            "id": self.id,
            "name": self.name,
            "last4": self.last4,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "state": self.state(now),
        }


class KeyStore:
    """API keys in a JSON file, re-read when another process changes it.

    Args:
        path: the keys file; it need not exist until the first key is created.
        clock: epoch time for ``created_at``/expiry and for pacing reload checks.
        reload_interval: at most how often (seconds) ``verify``/``has_keys`` stat the file.
        revoked_ids: extra revocations (e.g. synced from Redis) that ``verify`` honours.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock | None = None,
        reload_interval: float = 0.25,
        revoked_ids: Callable[[], Collection[str]] | None = None,
    ) -> None:
        if reload_interval < 0:
            raise ValueError("reload_interval cannot be negative")
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._clock: Clock = clock if clock is not None else WallClock()
        self._reload_interval = float(reload_interval)
        self._revoked_ids = revoked_ids
        self._mutex = threading.RLock()
        self._by_id: dict[str, ApiKey] = {}
        self._by_hash: dict[str, ApiKey] = {}
        self._signature: _Signature | None = None
        self._loaded = False
        self._next_check = 0.0

    # --- reading ---------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the file now (a missing file is an empty store).

        Raises:
            ConfigError: the file is unreadable or not a valid keys file.
        """
        with self._mutex:
            signature = self._stat()
            self._install(self._read() if signature is not None else [], signature)

    def _maybe_reload(self) -> float:
        """Re-read the file if it changed (looked at once per ``reload_interval``); the time."""
        now = self._clock.now()
        # The lower bound matters for wall clocks stepped backwards (NTP): without it a
        # server could stop noticing revocations until the clock caught up again. Checked
        # without the lock (it runs on every request): reading two attributes is atomic, and
        # a stale read only means taking the locked path, which stats the file once more.
        next_check = self._next_check
        if self._loaded and next_check - self._reload_interval <= now < next_check:
            return now
        with self._mutex:
            self._next_check = now + self._reload_interval
            signature = self._stat()
            if not self._loaded or signature != self._signature:
                self._install(self._read() if signature is not None else [], signature)
        return now

    def _stat(self) -> _Signature | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read API key file {self.path}: {exc.strerror}") from None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _read(self) -> list[ApiKey]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read API key file {self.path}: {exc}") from None
        try:
            return _decode(json.loads(text))
        except ValueError as exc:
            raise ConfigError(f"API key file {self.path} is corrupt: {exc}") from None

    def _install(self, keys: list[ApiKey], signature: _Signature | None) -> None:
        self._by_id = {k.id: k for k in keys}
        self._by_hash = {k.key_hash: k for k in keys}
        self._signature = signature
        self._loaded = True

    def verify(self, key: str) -> ApiKey:
        """Return the record of an active key.

        Raises:
            AuthError: the key is unknown, revoked or expired (the message never echoes it).
            ConfigError: the keys file is corrupt.
        """
        now = self._maybe_reload()
        digest = hash_key(key)
        # No lock for the lookup: _install swaps in a whole new dict, never edits one in place.
        record = self._by_hash.get(digest)
        # The dict lookup is keyed by a hash, not the secret; the final equality check is
        # constant-time so it leaks nothing about how much of a stored hash matched.
        expected = record.key_hash if record is not None else _NO_MATCH
        if not hmac.compare_digest(expected, digest) or record is None:
            raise AuthError("invalid API key")
        if record.revoked_at is not None or self._externally_revoked(record.id):
            raise AuthError(f"API key {record.id} has been revoked")
        if record.expires_at is not None and now >= record.expires_at:
            raise AuthError(f"API key {record.id} has expired")
        return record

    def _externally_revoked(self, key_id: str) -> bool:
        return self._revoked_ids is not None and key_id in self._revoked_ids()

    def has_keys(self) -> bool:
        """Whether the store holds any key at all, active or not.

        Revoked and expired keys count: revoking the last key must not silently turn
        authentication off for a server whose auth default follows this answer.
        """
        self._maybe_reload()
        return bool(self._by_id)  # asked per request; a whole dict is swapped in, no lock

    def list_keys(self) -> list[ApiKey]:
        """Every key record in creation order (the file's order)."""
        self._maybe_reload()
        with self._mutex:
            return [*self._by_id.values()]

    def get(self, key_id: str) -> ApiKey:
        """The record with this id.

        Raises:
            KeyNotFoundError: no key has this id.
        """
        self._maybe_reload()
        with self._mutex:
            record = self._by_id.get(key_id)
        if record is None:
            raise KeyNotFoundError(f"no API key with id {key_id!r} in {self.path}")
        return record

    # --- writing ---------------------------------------------------------------------------

    def create(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        expires_at: float | None = None,
    ) -> tuple[ApiKey, str]:
        """Create a key; return its record and the plaintext key, which is not stored.

        Raises:
            ConfigError: a bad name, a negative limit, or an expiry in the past.
        """
        name = name.strip()
        if not name or len(name) > _MAX_NAME:
            raise ConfigError(f"a key name must be 1-{_MAX_NAME} characters", param="name")
        for param, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and value < 0:
                raise ConfigError(f"{param} cannot be negative (0 means unlimited)", param=param)
        now = self._clock.now()
        if expires_at is not None and expires_at <= now:
            raise ConfigError("the expiry time is in the past", param="expires_at")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._locked() as keys:
            taken = {k.id for k in keys}
            # 48 random bits per id: a clash is astronomically rare, but never reuse an id.
            key_id = next(c for c in iter(_new_id, None) if c not in taken)
            record = ApiKey(
                id=key_id,
                name=name,
                last4=plaintext[-4:],
                key_hash=hash_key(plaintext),
                rpm=rpm,
                tpm=tpm,
                created_at=now,
                expires_at=expires_at,
                revoked_at=None,
            )
            keys.append(record)
        return record, plaintext

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key (idempotent: revoking it again keeps the first revocation time).

        Raises:
            KeyNotFoundError: no key has this id.
        """
        with self._locked() as keys:
            for i, record in enumerate(keys):
                if record.id == key_id:
                    if record.revoked_at is None:
                        record = replace(record, revoked_at=self._clock.now())
                        keys[i] = record
                    return record
        raise KeyNotFoundError(f"no API key with id {key_id!r} in {self.path}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[ApiKey]]:
        """Read-modify-write under the file lock; the list is written back if the body succeeds."""
        with self._mutex:
            _make_dir(self.path.parent)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                keys = self._read()
                before = list(keys)
                yield keys
                if keys != before:
                    self._write(keys)
                self._install(keys, self._stat())
            finally:
                os.close(fd)  # closing the descriptor releases the flock

    def _write(self, keys: list[ApiKey]) -> None:
        payload = {"version": _FILE_VERSION, "keys": [asdict(k) for k in keys]}
        # mkstemp creates the file with mode 0600, so the hashes are never world-readable.
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(payload, fh, indent=2)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def _new_id() -> str:
    return _ID_PREFIX + secrets.token_hex(6)


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create the API key directory {directory}: {exc}") from None


def _field(entry: dict[str, Any], name: str, n: int) -> Any:
    if name not in entry:
        raise ValueError(f"key #{n} has no {name!r} field")
    return entry[name]


def _number(raw: Any, where: str) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ValueError(f"{where} must be a number or null")
    return float(raw)


def _limit(raw: Any, where: str) -> int | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 0:
        raise ValueError(f"{where} must be a non-negative integer or null")
    return raw


def _text(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"{where} must be a non-empty string")
    return raw


def _decode(data: Any) -> list[ApiKey]:
    """Validate the parsed JSON document; raises ValueError on any unexpected shape."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    version = data.get("version")
    if version != _FILE_VERSION:
        raise ValueError(f"unsupported version {version!r} (expected {_FILE_VERSION})")
    entries = data.get("keys")
    if not isinstance(entries, list):
        raise ValueError("'keys' must be a list")
    keys: list[ApiKey] = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"key #{n} is not an object")
        key_hash = _text(_field(entry, "key_hash", n), f"key #{n} key_hash")
        if len(key_hash) != 64 or key_hash.strip("0123456789abcdef"):
            raise ValueError(f"key #{n} key_hash is not a SHA-256 hex digest")
        created_at = _number(_field(entry, "created_at", n), f"key #{n} created_at")
        if created_at is None:
            raise ValueError(f"key #{n} created_at must be a number")
        keys.append(
            ApiKey(
                id=_text(_field(entry, "id", n), f"key #{n} id"),
                name=_text(_field(entry, "name", n), f"key #{n} name"),
                last4=_text(_field(entry, "last4", n), f"key #{n} last4"),
                key_hash=key_hash,
                rpm=_limit(entry.get("rpm"), f"key #{n} rpm"),
                tpm=_limit(entry.get("tpm"), f"key #{n} tpm"),
                created_at=created_at,
                expires_at=_number(entry.get("expires_at"), f"key #{n} expires_at"),
                revoked_at=_number(entry.get("revoked_at"), f"key #{n} revoked_at"),
            )
        )
    return keys
