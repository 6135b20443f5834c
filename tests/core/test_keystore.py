"""KeyStore: hashed keys in a 0600 JSON file, atomic writes, live reload, clear auth errors."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from hfserve.core.clock import FakeClock
from hfserve.core.keystore import ApiKey, KeyStore, hash_key
from hfserve.errors import AuthError, ConfigError, KeyNotFoundError

T0 = 1_700_000_000.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "conf" / "hfserve" / "keys.json"


@pytest.fixture
def store(path: Path, clock: FakeClock) -> KeyStore:
    return KeyStore(path, clock=clock)


def test_create_returns_a_key_that_verifies(store: KeyStore) -> None:
    record, key = store.create("ci", rpm=10, tpm=1000)
    assert key.startswith("hf-")
    assert len(key) > 40
    assert record.id.startswith("key_")
    assert record.last4 == key[-4:]
    assert record.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert (record.rpm, record.tpm, record.created_at) == (10, 1000, T0)
    assert store.verify(key) == record
    assert store.get(record.id) == record


def test_each_key_is_unique(store: KeyStore) -> None:
    created = [store.create(f"k{i}") for i in range(5)]
    assert len({key for _, key in created}) == 5
    assert len({record.id for record, _ in created}) == 5
    assert [r.id for r in store.list_keys()] == [r.id for r, _ in created]


def test_the_file_never_contains_the_plaintext_key(store: KeyStore, path: Path) -> None:
    _, key = store.create("secret")
    raw = path.read_bytes()
    assert key.encode() not in raw
    assert key[3:].encode() not in raw  # not even without the prefix
    assert hash_key(key).encode() in raw


def test_file_is_0600_and_directory_0700(store: KeyStore, path: Path) -> None:
    store.create("a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    store.create("b")  # rewritten through a fresh temp file: still private
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["keys.json", "keys.json.lock"]


def test_file_format_is_versioned_json(store: KeyStore, path: Path) -> None:
    record, _ = store.create("a", expires_at=T0 + 60)
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert data["keys"] == [
        {
            "id": record.id,
            "name": "a",
            "last4": record.last4,
            "key_hash": record.key_hash,
            "rpm": None,
            "tpm": None,
            "created_at": T0,
            "expires_at": T0 + 60,
            "revoked_at": None,
        }
    ]


def test_unknown_key_is_refused_without_echoing_it(store: KeyStore) -> None:
    store.create("a")
    presented = "hf-not-a-real-key-but-long-enough-to-notice"
    with pytest.raises(AuthError) as info:
        store.verify(presented)
    assert str(info.value) == "invalid API key"
    assert presented not in str(info.value)


def test_verify_compares_hashes_in_constant_time(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = store.create("a")
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    store.verify(key)
    assert calls == [(hash_key(key), hash_key(key))]
    # An unknown key pays for the same comparison, against a dummy digest.
    with pytest.raises(AuthError):
        store.verify("hf-unknown")
    assert len(calls) == 2
    assert calls[1][1] == hash_key("hf-unknown")


def test_a_failed_constant_time_compare_refuses(
    store: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, key = store.create("a")
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: False)
    with pytest.raises(AuthError, match="invalid API key"):
        store.verify(key)


def test_revoked_key_is_refused_with_its_id(store: KeyStore, clock: FakeClock) -> None:
    record, key = store.create("a")
    clock.advance(5)
    revoked = store.revoke(record.id)
    assert revoked.revoked_at == T0 + 5
    assert revoked.state(clock.now()) == "revoked"
    with pytest.raises(AuthError, match=f"API key {record.id} has been revoked") as info:
        store.verify(key)
    assert key not in str(info.value)


def test_revoke_is_idempotent(store: KeyStore, clock: FakeClock, path: Path) -> None:
    record, _ = store.create("a")
    first = store.revoke(record.id)
    before = path.stat().st_mtime_ns, path.stat().st_ino
    clock.advance(10)
    assert store.revoke(record.id) == first
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before  # nothing rewritten


def test_unknown_ids_raise_key_not_found(store: KeyStore) -> None:
    store.create("a")
    with pytest.raises(KeyNotFoundError, match="key_nope"):
        store.revoke("key_nope")
    with pytest.raises(KeyNotFoundError, match="key_nope"):
        store.get("key_nope")


def test_expired_key_is_refused(store: KeyStore, clock: FakeClock) -> None:
    record, key = store.create("a", expires_at=T0 + 60)
    clock.advance(59)
    assert store.verify(key) == record
    clock.advance(1)
    with pytest.raises(AuthError, match=f"API key {record.id} has expired"):
        store.verify(key)
    assert record.state(clock.now()) == "expired"


def test_externally_revoked_ids_are_refused(path: Path, clock: FakeClock) -> None:
    revoked: set[str] = set()
    store = KeyStore(path, clock=clock, revoked_ids=lambda: revoked)
    record, key = store.create("a")
    assert store.verify(key) == record
    revoked.add(record.id)
    with pytest.raises(AuthError, match="has been revoked"):
        store.verify(key)


def test_has_keys_counts_revoked_and_expired_keys(store: KeyStore, clock: FakeClock) -> None:
    assert not store.has_keys()
    record, _ = store.create("a", expires_at=T0 + 1)
    assert store.has_keys()
    store.revoke(record.id)
    clock.advance(10)
    # Revoking or outliving the last key must not turn authentication off.
    assert store.has_keys()


def test_missing_file_is_an_empty_store(store: KeyStore, path: Path) -> None:
    assert store.list_keys() == []
    assert not path.exists()  # reading never creates anything
    store.reload()
    assert not store.has_keys()


def test_another_instance_sees_changes_after_reload_interval(path: Path, clock: FakeClock) -> None:
    writer = KeyStore(path, clock=clock)
    server = KeyStore(path, clock=clock, reload_interval=0.25)
    assert not server.has_keys()  # loads (nothing) and starts the interval
    record, key = writer.create("a")
    # Within the interval the server keeps its view: no stat on every request.
    with pytest.raises(AuthError, match="invalid API key"):
        server.verify(key)
    clock.advance(0.25)
    assert server.verify(key) == record
    writer.revoke(record.id)
    clock.advance(0.1)
    assert server.verify(key) == record
    clock.advance(0.15)
    with pytest.raises(AuthError, match="revoked"):
        server.verify(key)


def test_unchanged_file_is_not_re_read(
    path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = KeyStore(path, clock=clock)
    _, key = store.create("a")
    server = KeyStore(path, clock=clock)
    server.verify(key)
    reads: list[str] = []
    real_read = KeyStore._read

    def counting_read(self: KeyStore) -> list[ApiKey]:
        reads.append("read")
        return real_read(self)

    monkeypatch.setattr(KeyStore, "_read", counting_read)
    for _ in range(5):
        clock.advance(1)
        server.verify(key)
    assert reads == []


def test_reload_forces_a_re_read(path: Path, clock: FakeClock) -> None:
    writer = KeyStore(path, clock=clock)
    server = KeyStore(path, clock=clock, reload_interval=3600)
    assert server.list_keys() == []
    record, _ = writer.create("a")
    assert server.list_keys() == []
    server.reload()
    assert server.list_keys() == [record]


def test_deleted_file_empties_the_store(path: Path, clock: FakeClock) -> None:
    store = KeyStore(path, clock=clock, reload_interval=0)
    _, key = store.create("a")
    path.unlink()
    with pytest.raises(AuthError, match="invalid API key"):
        store.verify(key)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "Expecting property name"),
        ("[]", "expected a JSON object"),
        ('{"version": 2, "keys": []}', "unsupported version 2"),
        ('{"version": 1}', "'keys' must be a list"),
        ('{"version": 1, "keys": [1]}', "key #0 is not an object"),
        ('{"version": 1, "keys": [{"id": "key_1"}]}', "key #0 has no 'key_hash' field"),
    ],
)
def test_corrupt_file_raises_config_error_with_the_path(
    path: Path, clock: FakeClock, content: str, reason: str
) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(content)
    store = KeyStore(path, clock=clock)
    with pytest.raises(ConfigError, match=reason) as info:
        store.verify("hf-anything")
    assert str(path) in str(info.value)
    # A corrupt file is never overwritten by a write either.
    with pytest.raises(ConfigError):
        store.create("a")
    assert path.read_text() == content


def _entry(**overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": "key_1",
        "name": "a",
        "last4": "abcd",
        "key_hash": "0" * 64,
        "rpm": None,
        "tpm": None,
        "created_at": T0,
        "expires_at": None,
        "revoked_at": None,
    }
    entry.update(overrides)
    return entry


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"key_hash": "xyz"}, "not a SHA-256 hex digest"),
        ({"key_hash": "G" * 64}, "not a SHA-256 hex digest"),
        ({"created_at": None}, "created_at must be a number"),
        ({"created_at": "yesterday"}, "created_at must be a number or null"),
        ({"expires_at": True}, "expires_at must be a number or null"),
        ({"rpm": -1}, "rpm must be a non-negative integer"),
        ({"tpm": 1.5}, "tpm must be a non-negative integer"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"id": 7}, "id must be a non-empty string"),
    ],
)
def test_invalid_fields_are_reported(
    path: Path, clock: FakeClock, overrides: dict[str, Any], reason: str
) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "keys": [_entry(**overrides)]}))
    with pytest.raises(ConfigError, match=reason):
        KeyStore(path, clock=clock).list_keys()


def test_a_valid_hand_written_entry_loads(path: Path, clock: FakeClock) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "keys": [_entry(rpm=5, created_at=1)]}))
    (record,) = KeyStore(path, clock=clock).list_keys()
    assert (record.rpm, record.created_at) == (5, 1.0)


def test_unreadable_file_raises_config_error(path: Path, clock: FakeClock) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ConfigError, match="cannot read API key file"):
        KeyStore(path, clock=clock).list_keys()


def test_unstatable_path_raises_config_error(tmp_path: Path, clock: FakeClock) -> None:
    # A path "under" a regular file cannot be stat'ed (ENOTDIR): a config mistake, not "empty".
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot read API key file"):
        KeyStore(blocker / "keys.json", clock=clock).has_keys()


def test_uncreatable_directory_raises_config_error(tmp_path: Path, clock: FakeClock) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create the API key directory"):
        KeyStore(blocker / "sub" / "keys.json", clock=clock).create("a")


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(
    store: KeyStore, path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create("a")
    before = path.read_bytes()

    def broken_replace(src: str, dst: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        store.create("b")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["keys.json", "keys.json.lock"]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"name": "  "}, "name must be 1-200 characters"),
        ({"name": "x" * 201}, "name must be 1-200 characters"),
        ({"name": "a", "rpm": -1}, "rpm cannot be negative"),
        ({"name": "a", "tpm": -5}, "tpm cannot be negative"),
        ({"name": "a", "expires_at": T0}, "expiry time is in the past"),
    ],
)
def test_create_validates_its_arguments(
    store: KeyStore, path: Path, kwargs: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        store.create(**kwargs)
    assert not path.exists()


def test_create_strips_the_name(store: KeyStore) -> None:
    record, _ = store.create("  ci bot  ")
    assert record.name == "ci bot"


def test_negative_reload_interval_is_rejected(path: Path) -> None:
    with pytest.raises(ValueError, match="reload_interval"):
        KeyStore(path, reload_interval=-1)


def test_default_clock_is_wall_time(path: Path) -> None:
    import time

    before = time.time()
    record, _ = KeyStore(path).create("a")
    assert before <= record.created_at <= time.time()


def test_to_public_never_exposes_the_key_or_hash(store: KeyStore, clock: FakeClock) -> None:
    record, key = store.create("a", rpm=3, expires_at=T0 + 10)
    public = record.to_public(clock.now())
    assert public == {
        "id": record.id,
        "name": "a",
        "last4": key[-4:],
        "rpm": 3,
        "tpm": None,
        "created_at": T0,
        "expires_at": T0 + 10,
        "revoked_at": None,
        "state": "active",
    }
    text = json.dumps(public)
    assert key not in text
    assert record.key_hash not in text
    assert record.to_public(T0 + 10)["state"] == "expired"


def test_concurrent_writers_lose_no_keys(path: Path, clock: FakeClock) -> None:
    # Separate instances share nothing in memory: only the flock serialises their writes.
    from concurrent.futures import ThreadPoolExecutor

    def writer(n: int) -> list[str]:
        store = KeyStore(path, clock=clock)
        return [store.create(f"w{n}-{i}")[0].id for i in range(10)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = [key_id for batch in pool.map(writer, range(4)) for key_id in batch]
    assert sorted(r.id for r in KeyStore(path, clock=clock).list_keys()) == sorted(ids)
    assert len(ids) == 40


class SteppedClock:
    """A wall clock that an operator (or NTP) can step backwards."""

    def __init__(self, now: float) -> None:
        self.value = now

    def now(self) -> float:
        return self.value


def test_a_clock_stepped_backwards_does_not_stall_reloads(path: Path) -> None:
    clock = SteppedClock(T0)
    writer = KeyStore(path, clock=clock)
    server = KeyStore(path, clock=clock, reload_interval=0.25)
    record, key = writer.create("a")
    assert server.verify(key) == record
    clock.value = T0 - 3600
    writer.revoke(record.id)
    with pytest.raises(AuthError, match="revoked"):
        server.verify(key)
