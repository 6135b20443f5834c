"""The remote image fetch: address guard, redirects, size and time limits, on a loopback server.

The production policy refuses loopback, so the happy-path tests pass an explicit test policy
that admits exactly 127.0.0.1; the default is tested to refuse it.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpcore
import pytest

from hfserve.errors import InvalidRequestError
from hfserve.server.remote_media import (
    IPAddress,
    _GuardedBackend,
    fetch_media,
    is_public_address,
)
from tests.fixtures.tiny_vision import png_bytes

PNG = png_bytes()
LIMIT = 64 * 1024
PARAM = "messages.0.content.1"


def only_localhost(address: IPAddress) -> bool:
    """Test-only policy: 127.0.0.1 and nothing else."""
    return address == ipaddress.ip_address("127.0.0.1")


@dataclass
class LocalServer:
    """A minimal HTTP/1.1 server on 127.0.0.1 with one behaviour per path."""

    port: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        path = head.split(b" ", 2)[1].decode()
        try:
            if path == "/hang":
                await self.release.wait()
                return
            writer.write(self.response(path))
            await writer.drain()
        finally:
            writer.close()

    def response(self, path: str) -> bytes:
        def reply(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
            lines = [f"HTTP/1.1 {status}", "Connection: close"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

        if path == "/ok":
            return reply("200 OK", {"Content-Length": str(len(PNG))}, PNG)
        if path == "/declared-too-big":
            return reply("200 OK", {"Content-Length": str(LIMIT * 10)}, b"x" * 10)
        if path == "/streamed-too-big":
            chunk = b"x" * 4096
            body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(40)) + b"0\r\n\r\n"
            return reply("200 OK", {"Transfer-Encoding": "chunked"}, body)
        if path == "/to-ok":
            return reply("302 Found", {"Location": "/ok", "Content-Length": "0"})
        if path == "/to-other-host":
            location = f"http://127.0.0.2:{self.port}/ok"
            return reply("302 Found", {"Location": location, "Content-Length": "0"})
        return reply("404 Not Found", {"Content-Length": "0"})


@pytest.fixture
async def local_server() -> AsyncIterator[LocalServer]:
    state = LocalServer()
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        state.release.set()
        server.close()
        await server.wait_closed()


async def fetch(url: str, **kw: object) -> bytes:
    options: dict[str, object] = {
        "param": PARAM,
        "max_bytes": LIMIT,
        "time_limit": 5.0,
        "policy": only_localhost,
    }
    return await fetch_media(url, **(options | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("fe80::1", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("0.0.0.0", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("::ffff:127.0.0.1", False),  # IPv4-mapped loopback
        ("::ffff:8.8.8.8", True),
        ("fc00::1", False),
        ("240.0.0.1", False),
    ],
)
def test_only_public_unicast_addresses_pass(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


async def test_fetches_through_the_test_policy(local_server: LocalServer) -> None:
    assert await fetch(local_server.url + "/ok") == PNG
    assert await fetch(local_server.url + "/to-ok") == PNG


async def test_the_default_policy_refuses_loopback(local_server: LocalServer) -> None:
    with pytest.raises(InvalidRequestError, match="non-public address") as info:
        await fetch_media(local_server.url + "/ok", param=PARAM, max_bytes=LIMIT, time_limit=5)
    assert info.value.param == PARAM


@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "[::1]", "localhost"])
async def test_private_hosts_are_refused_before_connecting(host: str) -> None:
    with pytest.raises(InvalidRequestError, match="refused"):
        await fetch_media(f"http://{host}:9/x.png", param=PARAM, max_bytes=LIMIT, time_limit=5)


async def test_a_redirect_to_a_refused_address_is_refused(local_server: LocalServer) -> None:
    with pytest.raises(InvalidRequestError, match=r"127\.0\.0\.2"):
        await fetch(local_server.url + "/to-other-host")


async def test_size_limit_declared_and_streamed(local_server: LocalServer) -> None:
    for path in ("/declared-too-big", "/streamed-too-big"):
        with pytest.raises(InvalidRequestError, match="larger than") as info:
            await fetch(local_server.url + path)
        assert info.value.param == PARAM


async def test_time_limit(local_server: LocalServer) -> None:
    with pytest.raises(InvalidRequestError, match=r"longer than 0\.2s"):
        await fetch(local_server.url + "/hang", time_limit=0.2)


async def test_bad_status_scheme_and_unreachable_port(local_server: LocalServer) -> None:
    with pytest.raises(InvalidRequestError, match="HTTP 404"):
        await fetch(local_server.url + "/missing")
    with pytest.raises(InvalidRequestError, match="data:, http: or https:"):
        await fetch("ftp://127.0.0.1/x.png")
    closed = LocalServer()
    server = await asyncio.start_server(closed.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(InvalidRequestError, match="cannot fetch"):
        await fetch(f"http://127.0.0.1:{port}/ok")


async def test_unresolvable_hosts_and_unix_sockets_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = _GuardedBackend(only_localhost)
    with pytest.raises(Exception, match="unix sockets"):
        await backend.connect_unix_socket("/tmp/x.sock")
    await backend.sleep(0)

    async def no_dns(*args: object, **kwargs: object) -> list[object]:
        raise OSError("name does not resolve")

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", no_dns)
    with pytest.raises(httpcore.ConnectError, match="cannot resolve"):
        await backend.connect_tcp("nowhere.invalid", 80)
    with pytest.raises(InvalidRequestError, match="cannot fetch"):
        await fetch("http://nowhere.invalid/x.png")
