"""Fetching ``http(s)`` images for chat, guarded against server-side request forgery.

Off unless ``--allow-remote-media``. A fetch may only reach public addresses: the host is
resolved and *every* address it resolves to must be public, and the connection then goes to
the address that was checked - not to a second lookup a rebinding DNS server could answer
differently. The check sits in the network backend under httpx, so every hop of a redirect
is checked the same way. Size and time are bounded: ``Content-Length`` is checked first and
the body is counted while it streams; one deadline covers the redirects and the body.

No maintained Python library does address-checked connects for httpx (the SSRF packages on
PyPI are unmaintained or framework-bound), so the backend is written here, on httpcore's
public ``AsyncNetworkBackend`` interface.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

from hfserve.errors import InvalidRequestError

__all__ = ["AddressPolicy", "fetch_media", "is_public_address"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressPolicy = Callable[[IPAddress], bool]
_MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is a public unicast address (the only kind a fetch may reach).

    Refuses private, loopback, link-local, multicast, reserved, unspecified and shared
    (carrier-grade NAT) ranges; an IPv4-mapped IPv6 address is judged as its IPv4 address.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return bool(
        address.is_global
        and not (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        )
    )


class _BlockedAddressError(Exception):
    """The host resolves to an address the policy refuses."""


def _addresses(infos: Iterable[tuple[Any, ...]]) -> list[IPAddress]:
    # ``sockaddr[0]`` of an IPv6 result may carry a zone (``fe80::1%eth0``): drop it to parse.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks every address with the policy, then connects to a checked address."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._policy = policy

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Connect to ``host`` only if all its addresses pass the policy."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses = _addresses(infos)
        refused = [a for a in addresses if not self._policy(a)]
        if refused or not addresses:
            raise _BlockedAddressError(f"{host} resolves to a non-public address ({refused[0]})")
        return await self._inner.connect_tcp(
            str(addresses[0]), port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never: a media fetch goes over TCP to a checked address."""
        raise _BlockedAddressError("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        """Delegate to anyio."""
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool on the guarded backend."""

    def __init__(self, policy: AddressPolicy) -> None:
        super().__init__(retries=0, trust_env=False)
        # httpx builds its pool without a ``network_backend`` argument; replace it with one
        # on the guarded backend (``_pool`` is what ``handle_async_request`` sends through).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=4,
            retries=0,
            network_backend=_GuardedBackend(policy),
        )


async def fetch_media(
    url: str,
    *,
    param: str,
    max_bytes: int,
    time_limit: float,
    policy: AddressPolicy = is_public_address,
) -> bytes:
    """The body of ``url``, fetched from public addresses only, within size and time limits.

    Args:
        url: an ``http`` or ``https`` URL.
        param: the request field named in errors (``messages.0.content.1``).
        max_bytes: the largest body accepted.
        time_limit: seconds for the whole fetch, redirects included.
        policy: which resolved addresses may be reached; tests pass one that admits loopback.

    Raises:
        InvalidRequestError: refused address, bad status, too large, timed out or unreachable.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidRequestError("image URLs must be data:, http: or https: URLs", param=param)
    client = httpx.AsyncClient(
        transport=_GuardedTransport(policy),
        follow_redirects=True,
        max_redirects=_MAX_REDIRECTS,
        timeout=time_limit,
        trust_env=False,
    )
    try:
        async with client, asyncio.timeout(time_limit):
            return await _read(client, url, param, max_bytes)
    except TimeoutError:
        raise InvalidRequestError(
            f"fetching the image took longer than {time_limit:g}s", param=param
        ) from None
    except _BlockedAddressError as exc:
        raise InvalidRequestError(f"image URL refused: {exc}", param=param) from None
    except httpx.HTTPError as exc:
        raise InvalidRequestError(
            f"cannot fetch the image: {type(exc).__name__}: {exc}", param=param
        ) from None


async def _read(client: httpx.AsyncClient, url: str, param: str, max_bytes: int) -> bytes:
    too_large = f"the image at that URL is larger than {max_bytes} bytes"
    # Raw bytes, no content coding: a compressed body could expand far past the limit in
    # one chunk before it is counted.
    headers = {"accept-encoding": "identity"}
    async with client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            raise InvalidRequestError(
                f"fetching the image returned HTTP {response.status_code}", param=param
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise InvalidRequestError(too_large, param=param)
        body = bytearray()
        async for chunk in response.aiter_raw(_CHUNK):
            body.extend(chunk)
            if len(body) > max_bytes:
                raise InvalidRequestError(too_large, param=param)
    return bytes(body)
