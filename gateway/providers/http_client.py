"""A lean HTTP/1.1 client for the providers: asyncio Protocols, a keep-alive pool, llhttp.

    client = HttpClient(pool_size=100, connect_timeout_s=5, read_timeout_s=60)
    response = await client.request("POST", url, headers, body)  # once the headers are parsed
    body = await response.read()            # or: async for chunk in response.chunks(): ...
    response.release()                      # keep-alive: back to the pool (close() drops it)

One request is in flight per connection (no pipelining). Connections are pooled per
(scheme, host, port, proxy), at most `pool_size` per key (0: no limit); past it callers wait in FIFO
order. An idle connection that the server closed, or idle longer than `keepalive_s`, is never
reused, and if a reused connection breaks before any byte of the answer arrived (the server
closed it as we sent), the request is sent once more on a new connection; never once an answer
has begun. New connections: addresses cached `DNS_TTL_S`, Happy Eyeballs across them.

Responses are parsed by httptools (llhttp), as leniently as aiohttp's parser (bare LF line ends,
odd header bytes, spaces after a chunk size): chunked bodies are decoded, a body with neither
Content-Length nor chunked ends at EOF, and a gzip or deflate Content-Encoding is undone, so
callers always see the identity bytes. An event stream's chunked body is decoded in Rust
(`_core.Dechunker`, with the same leniencies): one `bytes` per read instead of a `bytes` and a
callback per HTTP chunk (upstreams that write each SSE line as a chunk send three per Anthropic
event); its trailer fields are read past (nothing reads a stream's headers once it streams).
A reader may have that body reframed as it is read (`reframe_into`): each read goes through
the reframer in the connection's callback, and only a read that completes an event wakes it.
No Accept-Encoding, User-Agent, cookies or redirects: a caller that wants one does it itself.

Egress proxies (`proxies`, gateway/providers/proxy.py): through an http proxy, a plain-http
request is sent to the proxy with its absolute URI; an https one opens a CONNECT tunnel and then
TLS to the origin inside it (SNI and certificate checked for the origin's host). Either carries
`Proxy-Authorization` when the proxy URL has credentials. Connecting and the tunnel are one
connect step (`connect_timeout_s`, ConnectFailed).

Timeouts: connecting (DNS, TCP and TLS) longer than `connect_timeout_s`, or waiting longer than
`read_timeout_s` for the next bytes of an answer, raises TimeoutError; so do the caller's
deadlines, `headers_timeout_s` of `request` (pool wait and connect included) and its
`whole_timeout_s` or `HttpResponse.expire_at` (the whole answer). One deadline per answer checks
all of them, in the client's timer wheel (gateway/timer_wheel.py: one loop timer for all the
answers, each called at most 50 ms after its time); it is re-armed only when it comes early (no
timer per read).
A cancelled caller drops its connection. Error messages never quote a header value.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import socket
import ssl
import zlib
from collections import deque
from collections.abc import (
    AsyncIterator,
    Callable,
    ItemsView,
    Iterator,
    KeysView,
    Mapping,
    Sequence,
)
from typing import Final, NamedTuple, NoReturn, cast, final
from urllib.parse import quote, urlsplit

import aiohappyeyeballs
import httptools

from gateway import _core
from gateway.admission_gate import GATE
from gateway.providers.proxy import Proxy, ProxyPolicy, TunnelRefused, open_tunnel
from gateway.timer_wheel import RESOLUTION_S, Slot, TimerWheel

__all__ = ["ConnectFailed", "FixedHeaders", "HttpClient", "HttpResponse", "ResponseBroken"]


class ConnectFailed(Exception):
    """No connection could be made (DNS, refused, unreachable, TLS handshake): the request
    provably never reached the server."""


class ResponseBroken(Exception):
    """The answer broke off or was not HTTP: reset, EOF before its end, malformed, undecodable."""


# Unread body bytes past which the socket is not read until the reader takes them (all at once).
HIGH_WATER: Final = 256 * 1024
# The most a whole answer (`read()`) may hold, on the wire and decoded: a larger one fails
# (ResponseBroken) instead of growing the worker until it is killed with every stream it
# serves (an upstream in a loop, a decompression bomb). Far above any real answer: 2,048
# embeddings of 3,072 floats are ~130 MB of JSON. An event stream's pieces are taken as they
# come, each bounded the same way when decoded; its events by the reframer (1 MiB each).
MAX_ANSWER_BYTES: Final = 256 * 1024 * 1024
TOO_LARGE: Final = (
    f"the upstream's answer is larger than the gateway takes ({MAX_ANSWER_BYTES >> 20} MiB)"
)
# The most an answer's head may hold (its interim answers' heads included): nginx refuses an
# upstream's head past 4-8 KB ("upstream sent too big header"); real ones are 1-2 KB. Without
# it, an upstream sending header lines without end grew the worker by every byte.
MAX_HEAD_BYTES: Final = 64 * 1024


class HeadTooLarge(ValueError):
    """An answer's head past MAX_HEAD_BYTES."""


# Methods that get no `Content-Length: 0` when they carry no body (as aiohttp).
_BODYLESS_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "CONNECT"})
_MAX_CACHED: Final = 1024  # URLs, resolved hosts, pools: past it the cache starts afresh
# Resolved addresses are reused this long (aiohttp's ttl_dns_cache, as the providers had it).
DNS_TTL_S: Final = 300.0
# Happy Eyeballs (RFC 8305): the next address is tried if one has not connected in this long.
HAPPY_EYEBALLS_DELAY_S: Final = 0.25
# Characters left as they are in a request target; anything else is percent-encoded.
_TARGET_SAFE: Final = "/%:@!$&'()*+,;=?~-._"


_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def _header_block(headers: Mapping[str, str]) -> str:
    """The headers' lines (`Name: value\r\n` each), checked: a CR or LF in a name or value
    raises ValueError (no header injection)."""
    block = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if block.count("\n") != len(headers) or block.count("\r") != len(headers):
        raise ValueError("a header name or value contains CR or LF")
    return block


@final
class FixedHeaders(Mapping[str, str]):
    """Request headers that do not change (a provider's own, sent with every call): a read-only
    mapping whose lines are written out and checked once, here, not per request. Anything that
    adds a header (traces' `traceparent`) copies it into a dict, which is written per request."""

    __slots__ = ("_headers", "block")

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)
        self.block = _header_block(self._headers)

    def __getitem__(self, name: str) -> str:
        return self._headers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers)

    def __len__(self) -> int:
        return len(self._headers)

    def __contains__(self, name: object) -> bool:
        return name in self._headers

    def keys(self) -> KeysView[str]:  # (the dict's own: a copy `{**fixed}` reads these)
        return self._headers.keys()

    def items(self) -> ItemsView[str, str]:
        return self._headers.items()

    def __repr__(self) -> str:  # the names only: values may be credentials
        return f"FixedHeaders({sorted(self._headers)})"


class _Target(NamedTuple):
    key: tuple[str, str, int, Proxy | None]
    host: str  # to connect to (an IPv6 literal without brackets): the proxy's, if any
    port: int
    tls: bool
    line_rest: str  # " {path} HTTP/1.1\r\nHost: {authority}\r\n", after the method
    origin: str  # the URL's host (TLS server name and certificate check)
    tunnel: bytes | None  # the CONNECT request, when https goes through a proxy
    where: str  # for messages: "host:port", or "host:port through proxy p:q" (no credentials)


def _parse_target(url: str, proxies: ProxyPolicy | None) -> _Target:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("only http and https URLs are supported")
    host = parts.hostname
    if not host:
        raise ValueError("the URL has no host")
    port = parts.port or (443 if scheme == "https" else 80)
    if not host.isascii():
        host = host.encode("idna").decode("ascii")
    authority = f"[{host}]" if ":" in host else host
    if port != (443 if scheme == "https" else 80):
        authority = f"{authority}:{port}"
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    if not path.isascii() or not path.isprintable() or " " in path:
        path = quote(path, safe=_TARGET_SAFE)
    tls = scheme == "https"
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    proxy = None if proxies is None else proxies.choose(scheme, host, port)
    if proxy is None:
        line_rest = f" {path} HTTP/1.1\r\nHost: {authority}\r\n"
        return _Target((scheme, host, port, None), host, port, tls, line_rest, host, None, hostport)
    auth = "" if proxy.authorization is None else f"Proxy-Authorization: {proxy.authorization}\r\n"
    where = f"{hostport} through proxy {proxy.display}"
    if tls:  # a tunnel: the proxy sees only CONNECT; requests inside it are origin-form
        connect = f"CONNECT {hostport} HTTP/1.1\r\nHost: {hostport}\r\n{auth}\r\n".encode()
        line_rest = f" {path} HTTP/1.1\r\nHost: {authority}\r\n"
    else:  # the proxy forwards it: absolute URI, and the proxy's credentials on every request
        connect = None
        line_rest = f" http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n{auth}"
    return _Target(
        (scheme, host, port, proxy), proxy.host, proxy.port, tls, line_rest, host, connect, where
    )


# `Reframer.feed_chunked`'s answer after a read when the body has ended; 1: it goes on and the
# reframer read its terminator or an upstream error; 0: both go on (its events may then be sent
# from the read: `_direct`).
_BODY_ENDED: Final = 2

# A reframed event stream's upstream is not read again in the loop turn after a read that did
# not end it (`_Connection.hold`), whether its events were sent from the read callback, left for
# the relay, or none completed. One turn, not a time: uvloop (the server's loop) rounds
# `call_later` to whole milliseconds and runs a delay under 0.5 ms as `call_soon` (issue 19zzq).
# Measured served, not counted: read_cost, which forces every read, prices it at 6-7 % of an
# Anthropic stream's instructions, yet a saturated stream costs the upstream's core ~15 % less
# and streams/s rise 8-13 % (decision 0012's 19zzy); why, at the socket, is not yet known (it
# never takes the socket out of epoll: 19zzx). Paused instead until the stream's reader waits
# again (its sends done), it was read a third less often and cost every program more, the loop
# sleeping twice as often (decision 0011's 19zzzzzh).


class HttpClient:
    """Keep-alive HTTP/1.1 connections, pooled per (scheme, host, port)."""

    def __init__(
        self,
        pool_size: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        *,
        keepalive_s: float = 15.0,  # an idle connection older than this is closed, not reused
        proxies: ProxyPolicy | None = None,  # None: always direct
        hold_reads: bool = True,  # False: none (`_Connection.hold`)
    ) -> None:
        self._limit = pool_size
        self._hold_reads = hold_reads
        self._proxies = proxies
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._keepalive_s = keepalive_s
        self._pools: dict[tuple[str, str, int, Proxy | None], _Pool] = {}
        self._targets: dict[str, _Target] = {}
        self._dns: dict[tuple[str, int], tuple[float, Sequence[aiohappyeyeballs.AddrInfoType]]] = {}
        self._ssl: ssl.SSLContext | None = None
        self._closed = False
        # The event loop of the first request: every later one runs on it (one client per
        # provider per worker). Kept because asyncio.get_running_loop() costs a getpid()
        # system call on every call in CPython 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        # The answers' deadlines, on the loop (one loop timer for all: gateway/timer_wheel.py).
        self._deadlines: TimerWheel | None = None

    def clock(self) -> float:
        """The event loop's time (what deadlines are given in)."""
        return (self._loop or self._event_loop()).time()

    # Per request, callers write `(client._loop or client._event_loop())`: the loop once known
    # is an attribute read, not a call (five per request).
    def _event_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            self._deadlines = TimerWheel(loop)
        return loop

    async def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        headers_timeout_s: float | None = None,
        whole_timeout_s: float | None = None,
        stream: bool = False,
    ) -> HttpResponse:
        """Sends one request; returns when the answer's status line and headers are parsed.
        `Host` and `Content-Length` are the client's to send, not the caller's.
        `headers_timeout_s`: the headers must have arrived by then, waiting for a pooled
        connection and connecting included; `whole_timeout_s`: the whole answer, body included
        (counted from this call; its reader gets TimeoutError then, as with `expire_at`);
        `stream`: the caller asked for an event stream (its head may be read apart from its
        body; any answer is read right). Raises ConnectFailed, ResponseBroken, TimeoutError, or
        ValueError for a URL or header that cannot be sent (a CR or LF in a header: no header
        injection)."""
        if self._closed:
            raise RuntimeError("the HTTP client is closed")
        loop = self._loop or self._event_loop()
        whole_by = None if whole_timeout_s is None else loop.time() + whole_timeout_s
        target = self._targets.get(url)
        if target is None:
            target = _parse_target(url, self._proxies)
            if len(self._targets) >= _MAX_CACHED:
                self._targets.clear()
            self._targets[url] = target
        # a provider's fixed headers were written out and checked once, when made
        block = headers.block if type(headers) is FixedHeaders else _header_block(headers)
        if method not in _METHODS and (not method.isascii() or not method.isalpha()):
            raise ValueError("the method is not an HTTP token")
        if body:
            length = f"Content-Length: {len(body)}\r\n"
        else:
            length = "" if method in _BODYLESS_METHODS else "Content-Length: 0\r\n"
        head = f"{method}{target.line_rest}{length}{block}\r\n".encode()
        payload = head + body if body else head
        head_only = method == "HEAD"

        pool = self._pools.get(target.key)
        if pool is None:
            if len(self._pools) >= _MAX_CACHED:  # many hosts (image downloads): forget
                self._pools = {k: p for k, p in self._pools.items() if p.count or p.waiters}
            pool = self._pools[target.key] = _Pool(self, target)
        gate = GATE.get()  # closed_gate(), inline
        if gate is not None and not gate.open:
            await gate.passed()  # the request's admission is on its way: nothing leaves before it
        headers_by = None if headers_timeout_s is None else loop.time() + headers_timeout_s
        fresh = False
        while True:
            # a kept-alive connection taken at once (no `acquire` coroutine), as most are
            conn = pool._take_idle() if not fresh and pool.idle else None
            if conn is None:
                conn = await pool.acquire(fresh, headers_by)
            response = HttpResponse(
                conn,
                self._read_timeout_s,
                head_only,
                headers_by,
                whole_by,
                stream and pool.chunked_streams,
            )
            conn.response = response  # the request written here (no method: a frame less)
            transport = conn.transport
            if transport is None:
                response._fail(ResponseBroken("the connection closed before the request was sent"))
            else:
                transport.write(payload)
            try:
                # `_wait_until(_has_headers)` and `_wait()` written out: four frames less per
                # request (the call and the resumption of each)
                while not response._headers_done:
                    if response._error is not None:
                        response._raise_copy(response._error)
                    waiter = loop.create_future()
                    response._waiter = waiter
                    response._wait_since = loop.time()
                    try:
                        await waiter
                    finally:
                        response._waiter = None
            except ResponseBroken:
                response.close()
                if fresh or not conn.reused or response._got_bytes:
                    raise
                fresh = True  # the server closed a kept-alive connection under us: once more
            except BaseException:
                response.close()
                raise
            else:
                return response

    async def close(self) -> None:
        """Closes every connection, idle or busy; later requests raise RuntimeError."""
        self._closed = True
        pools = list(self._pools.values())
        self._pools.clear()
        for pool in pools:
            pool.close()
        await asyncio.sleep(0)  # let the transports report connection_lost

    async def _resolve(self, host: str, port: int) -> Sequence[aiohappyeyeballs.AddrInfoType]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{host} has no address")
        if len(self._dns) >= _MAX_CACHED:
            self._dns.clear()
        self._dns[(host, port)] = (now + DNS_TTL_S, infos)
        return infos

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl


class _Pool:
    """The connections to one (scheme, host, port, proxy): `count` open or opening, some idle."""

    __slots__ = ("chunked_streams", "client", "conns", "count", "idle", "target", "waiters")

    def __init__(self, client: HttpClient, target: _Target) -> None:
        self.client = client
        self.target = target
        # Whether the last event stream asked of this upstream came with a chunked body (as
        # real providers' do): the next one's head is then read apart from its body.
        self.chunked_streams = True
        self.count = 0
        self.conns: set[_Connection] = set()
        self.idle: list[_Connection] = []  # oldest first; reuse takes the newest
        # Callers waiting for a connection (handed one) or for a slot to open one (None).
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()

    async def acquire(self, fresh: bool, deadline: float | None) -> _Connection:
        """`deadline` (loop time, or None): waiting for a connection and connecting end by
        then (TimeoutError)."""
        client = self.client
        while True:
            if not fresh and self.idle:
                conn = self._take_idle()
                if conn is not None:
                    return conn
            if client._limit <= 0 or self.count < client._limit:
                self.count += 1
                return await self._open(deadline)
            waiter: asyncio.Future[_Connection | None] = (
                client._loop or client._event_loop()
            ).create_future()
            self.waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    granted = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    granted = waiter.result()  # granted as we were cancelled: pass it on
                    if granted is None:
                        self.count -= 1  # the slot kept for us is free again
                    self._pass_on(granted)
                raise
            if granted is None:
                # a slot was kept for us (count already includes it)
                return await self._open(deadline)
            if granted.usable():
                return granted
            # handed a connection that died before we ran: its slot went to the next waiter

    def _take_idle(self) -> _Connection | None:
        idle = self.idle
        now = (self.client._loop or self.client._event_loop()).time()
        while idle:
            conn = idle.pop()
            transport = conn.transport  # `conn.usable()`, inline
            if conn.closed or transport is None or transport.is_closing():
                conn.close()
                continue
            if now - conn.idle_since > self.client._keepalive_s:
                stale = [conn, *idle]  # the older ones are staler still
                idle.clear()
                for old in stale:
                    old.close()
                return None
            return conn
        return None

    async def _open(self, deadline: float | None) -> _Connection:
        """A new connection in a slot already counted."""
        client = self.client
        target = self.target
        loop = asyncio.get_running_loop()
        conn = _Connection(self)
        connect_by = loop.time() + client._connect_timeout_s
        if deadline is not None:
            connect_by = min(connect_by, deadline)
        try:
            async with asyncio.timeout_at(None) as scope:
                # The deadline's timer armed in a context of its own: cancelled once connected,
                # asyncio keeps it in its heap until it comes to the top (up to its 5 s) with
                # the context it was made in: the request's would be kept that long after the
                # request (its log record, its admission). (uvloop drops it at once.)
                contextvars.Context().run(scope.reschedule, connect_by)
                sock = await aiohappyeyeballs.start_connection(
                    await client._resolve(target.host, target.port),
                    happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY_S,
                    interleave=1,
                )
                try:
                    if target.tunnel is not None:
                        await open_tunnel(loop, sock, target.tunnel)
                    # Made in a context of its own: both loops run a transport's callbacks in
                    # the context current when it was made, and a pooled connection outlives
                    # the request that opened it (its log record, its admission's gate). The
                    # task is cancelled with this one (awaited directly).
                    await loop.create_task(
                        loop.create_connection(
                            lambda: conn,
                            sock=sock,
                            ssl=client._ssl_context() if target.tls else None,
                            server_hostname=target.origin if target.tls else None,
                        ),
                        context=contextvars.Context(),
                    )
                except BaseException:
                    sock.close()  # a no-op if the failed transport closed it already
                    raise
        except TimeoutError as exc:
            conn.close()
            if scope.expired():
                raise TimeoutError(f"connecting to {target.where} timed out") from None
            raise ConnectFailed(f"could not connect to {target.where}") from exc
        except TunnelRefused as exc:  # its message says why (no credentials in it)
            conn.close()
            raise ConnectFailed(f"could not connect to {target.where}: {exc}") from exc
        except (OSError, RuntimeError) as exc:  # DNS, refused, unreachable, TLS (an OSError)
            conn.close()
            client._dns.pop((target.host, target.port), None)  # resolve afresh next time
            raise ConnectFailed(
                f"could not connect to {target.where}: {type(exc).__name__}"
            ) from exc
        except BaseException:
            conn.close()
            raise
        if conn.closed or client._closed:  # lost between the handshake and now, or shut down
            conn.close()
            raise ConnectFailed(f"the connection to {target.where} closed at once")
        self.conns.add(conn)
        return conn

    def put_back(self, conn: _Connection) -> None:
        """A connection whose answer was read to its end, kept alive."""
        conn.response = None
        transport = conn.transport  # `conn.usable()`, inline (once per answer)
        if conn.closed or transport is None or transport.is_closing() or self.client._closed:
            conn.close()
            return
        if conn.paused:
            conn.resume()
        conn.reused = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = (self.client._loop or self.client._event_loop()).time()
        self.idle.append(conn)

    def discard(self, conn: _Connection) -> None:
        """A connection closed: its slot goes to the first waiter, if any."""
        self.conns.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        self.count -= 1
        self._pass_on(None)

    def _pass_on(self, granted: _Connection | None) -> None:
        if granted is not None:
            self.put_back(granted)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                self.count += 1  # kept for that waiter
                waiter.set_result(None)
                return

    def close(self) -> None:
        while self.waiters:  # first: closing connections below would grant them slots
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the HTTP client was closed"))
        for conn in list(self.conns):
            conn.close()
        self.idle.clear()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; its bytes go to the response in flight."""

    __slots__ = (
        "_discarded",
        "_hold_end",
        "closed",
        "holds",
        "idle_since",
        "paused",
        "pool",
        "response",
        "reused",
        "transport",
    )

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: HttpResponse | None = None
        self.closed = False
        self.reused = False
        self.paused = False
        self._hold_end: asyncio.Handle | None = None  # the last hold's end (`hold`)
        self.holds = pool.client._hold_reads
        self.idle_since = 0.0
        self._discarded = False

    def usable(self) -> bool:
        transport = self.transport
        return not self.closed and transport is not None and not transport.is_closing()

    def close(self) -> None:
        """Drops the connection at once (idempotent)."""
        self.closed = True
        self._hold_end = None  # (it refers to the transport)
        transport = self.transport
        if transport is not None:
            self.transport = None
            transport.abort()
        if not self._discarded:
            self._discarded = True
            self.pool.discard(self)

    def pause(self) -> None:
        transport = self.transport
        if not self.paused and transport is not None and not transport.is_closing():
            self.paused = True
            transport.pause_reading()
            hold_end = self._hold_end  # a hold in progress ends with the pause's `resume`
            if hold_end is not None:
                self._hold_end = None
                hold_end.cancel()

    def resume(self) -> None:
        transport = self.transport
        if self.paused and transport is not None and not transport.is_closing():
            self.paused = False
            transport.resume_reading()

    def hold(self, loop: asyncio.AbstractEventLoop) -> None:
        """Not read until the loop's next turn, unless not being read already (held, or
        paused by `pause`, which cancels a hold's end: its `resume` ends both). Once per read
        of a reframed stream, so its end is the transport's own `resume_reading`, queued as
        it is: no Python frame (on a closing transport it does nothing, on uvloop's and
        asyncio's alike). `data_received` calls it, so its tests test the read path's hold."""
        transport = self.transport
        if transport is None or not transport.is_reading():
            return
        transport.pause_reading()
        self._hold_end = loop.call_soon(transport.resume_reading)

    @property
    def held(self) -> bool:
        """Whether a hold is what keeps the connection unread now."""
        transport = self.transport
        return (
            not self.paused
            and transport is not None
            and not transport.is_closing()
            and not transport.is_reading()
        )

    # -- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes while idle: nothing can be trusted on this connection
            self.close()
            return
        if response._finished:
            self.close()  # the caller is done with this answer: more bytes are not ours
            return
        # A plain head is read in one call (`_first_read`), then its Content-Length body
        # counted here (`_length_body`); any other head goes to httptools, which reads it and
        # any body but an event stream's chunked one, which the Dechunker reads (the parser
        # dropped then: `_read_head`).
        parser = response._parser
        dechunker = response._dechunker
        response._got_bytes = True
        response._last_bytes_at = response._loop.time()
        try:
            if parser is not None:
                if response._headers_done:
                    parser.feed_data(data)
                else:
                    data = response._read_head(parser, data)
                    dechunker = response._dechunker
            elif response._left >= 0:
                response._length_body(data)
            elif dechunker is None:  # the answer's first bytes
                data = response._first_read(data)
                dechunker = response._dechunker
            if dechunker is not None and data:
                sink = response._sink
                if sink is None:
                    body = dechunker.feed(data)
                    if body:
                        response._chunks.append(body)
                    ended = dechunker.done
                elif response._sink_error is None:
                    try:  # de-chunked and reframed in one call (no `bytes` of the body), the
                        # body's end and the reframer's answered with it (no crossing more for them)
                        out, after = sink.feed_chunked(dechunker, data)
                    except _core.SseError as exc:  # the reframer's (the Dechunker's: ValueError)
                        response._sink_failed(exc, sink.before_error())
                        ended = dechunker.done
                    else:
                        ended = after == _BODY_ENDED
                        if out:
                            # While the reader waits, its pieces may be sent from here (a
                            # reader's `deliver_to`): not the last one (the terminator, an
                            # upstream error, or the body's end: its closing events go with
                            # it), nor before a failure.
                            direct = response._direct
                            waiter = response._waiter
                            if (
                                after
                                or direct is None
                                or waiter is None
                                or response._chunks
                                or waiter.done()
                                or not direct(out, waiter)
                            ):
                                response._chunks.append(out)
                        if not ended and self.holds:
                            self.hold(response._loop)
                else:  # (the reframer failed: the body is still read, for its end)
                    dechunker.feed(data)
                    ended = dechunker.done
                if ended:
                    if not response._complete:
                        response._finish_message(response._keep_alive)
                    if dechunker.leftover:
                        raise ValueError("bytes after the answer")
        except (httptools.HttpParserError, httptools.HttpParserUpgrade, ValueError) as exc:
            reason = str(exc) if isinstance(exc, HeadTooLarge) else "malformed HTTP"
            response._fail(ResponseBroken(f"the upstream answered {reason}"))
            self.close()
            return
        # The body's chunks were appended by the parser (no Python call per HTTP chunk), or
        # a reframer's events (`reframe_into`: a read that completes no event appends
        # nothing): the reader is woken once per read, and the socket paused past the
        # high-water mark.
        if response._chunks:
            waiter = response._waiter  # `response._wake()`, inline
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            response._wire += len(data)  # an upper bound of the body bytes buffered
            if not response._unbounded:
                if response._wire > HIGH_WATER and response._buffered > HIGH_WATER:
                    self.pause()
            elif response._wire > MAX_ANSWER_BYTES:
                response._fail(ResponseBroken(TOO_LARGE))
                self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.close()
        response = self.response
        if response is not None:
            response._connection_lost(exc)


def head_end(window: bytes, start: int) -> int:
    """Where the first head that ends in `window[start:]` ends: after its blank line (a CRLF or
    bare-LF line, then an empty one; the head ends in it). A bare-LF blank line counts only
    before the first CRLF one: a body of CRLF lines (Google's streams) has none, and is not
    searched to its end for one."""
    crlf = window.find(b"\n\r\n", start)
    lf = window.find(b"\n\n", start, len(window) if crlf < 0 else crlf + 1)
    if lf >= 0:
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    raise ValueError("no blank line ends the head")


class _BodyByDechunker(Exception):
    """Raised by `on_headers_complete` to stop the parser after an event stream's head: the
    Dechunker reads its chunked body from the next byte on."""


def _add_header(headers: dict[str, str], name: bytes, value: bytes) -> None:
    """One header into `HttpResponse.headers`: lower-case name, a repeated one joined by ", "."""
    key = name.decode("latin-1").lower()
    text = value.decode("latin-1")
    known = headers.get(key)
    headers[key] = text if known is None else f"{known}, {text}"


class HttpResponse:
    """An answer whose status and headers are known; its body is read with `read()` or
    `chunks()`, then `release()` (keep-alive) or `close()` (drop the connection)."""

    __slots__ = (
        "_chunks",
        "_complete",
        "_conn",
        "_dechunker",
        "_decoder",
        "_deflate_probe",
        "_direct",
        "_eof_body",
        "_error",
        "_finished",
        "_got_bytes",
        "_head",
        "_head_alone",
        "_head_first",
        "_head_only",
        "_head_tail",
        "_headers",
        "_headers_by",
        "_headers_done",
        "_heads",
        "_interim",
        "_keep_alive",
        "_last_bytes_at",
        "_left",
        "_lingering",
        "_loop",
        "_parser",
        "_raw_headers",
        "_read_timeout_s",
        "_sink",
        "_sink_error",
        "_skip",
        "_timer",
        "_timers",
        "_unbounded",
        "_wait_since",
        "_waiter",
        "_whole_by",
        "_wire",
        "on_body",
        "status",
    )

    def __init__(
        self,
        conn: _Connection,
        read_timeout_s: float,
        head_only: bool,
        headers_by: float | None = None,
        whole_by: float | None = None,
        stream: bool = False,
    ) -> None:
        self.status = 0
        # The headers as they came, name and value after name and value (bytes), or the plain
        # head they are in (`_first_read`): `headers`, the dictionary, is made of them when
        # first asked for (on the hot path, never).
        self._raw_headers: list[bytes] = []
        self._head = b""
        self._headers: dict[str, str] | None = None
        self._conn: _Connection | None = conn
        self._chunks: list[bytes] = []  # taken all at once (a deque's first block: 0.5 KB)
        # The head's length at the start of `_chunks[0]`, when that is the head's read with the
        # body's first bytes (`_first_read`): not sliced off (a copy of the body) until a
        # reader takes it; a reframer's reader feeds the read from there (`ReframedStream`).
        self._skip = 0
        # Each HTTP chunk of the body goes straight into the list (httptools looks `on_body` up
        # once, here): no Python frame per chunk; a compressed body is decoded when taken. A
        # HEAD answer has no body: one that arrives anyway is an error.
        self.on_body: Callable[[bytes], None] = self._no_body if head_only else self._chunks.append
        # The parser (made for a head that is not plain: `_first_read`) calls this object's
        # on_* methods; dropped when done, or once the Dechunker reads the body (no reference
        # cycle).
        self._parser: httptools.HttpResponseParser | None = None
        self._left = -1  # a plain head's Content-Length body: the bytes still to come
        client = conn.pool.client
        self._loop = client._loop or client._event_loop()
        timers = client._deadlines
        assert timers is not None  # noqa: S101 (made with the loop)
        self._timers = timers
        self._read_timeout_s = read_timeout_s
        self._head_only = head_only
        self._wire = 0  # bytes read since the body was last taken (see data_received)
        self._headers_done = False
        self._head_tail = b""  # the head's last bytes read so far (its end may straddle reads)
        self._heads = 0  # heads parsed (interim answers' and the answer's)
        # An event stream was asked for, and the last one of this upstream came chunked: the
        # head, if whole in the first read, is fed to the parser alone (`_read_head`).
        self._head_first = stream
        self._head_alone = False  # (while the head is fed alone)
        # An event stream's chunked body, read in Rust from the byte after the head on.
        self._dechunker: _core.Dechunker | None = None
        # Its reader's reframer, fed as the bytes arrive (`reframe_into`), and its failure.
        self._sink: _core.Reframer | None = None
        self._sink_error: Exception | None = None
        # Where its reframed pieces go while its reader waits, instead of waking it.
        self._direct: Callable[[bytes, asyncio.Future[None]], bool] | None = None
        self._interim = False
        self._complete = False  # the whole message arrived
        self._keep_alive = False
        self._eof_body = False
        self._unbounded = False  # read(): buffer everything, never pause
        self._got_bytes = False
        self._finished = False  # released or closed
        self._lingering = False  # released before its end arrived (release_when_whole)
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._decoder: zlib._Decompress | None = None
        self._deflate_probe = False
        # Timeouts: one deadline per answer in the client's wheel (`_timer`: its slot there),
        # re-armed only when it comes early. What it checks:
        # the headers by `_headers_by`, the whole answer by `_whole_by` (expire_at), and no
        # silence longer than `read_timeout_s` while the caller waits for bytes, once the
        # headers came (before, `_headers_by` alone, when given: a non-streamed answer's
        # headers come with the whole answer, after a silence as long as its generation).
        now = self._loop.time()
        self._headers_by = headers_by
        self._whole_by = whole_by
        self._last_bytes_at = now
        self._wait_since = now
        # `_arm()`, inline: `_due()` with nothing read or waited for yet
        due = now + read_timeout_s if headers_by is None else headers_by
        if whole_by is not None and whole_by < due:
            due = whole_by
        self._timer: Slot | None = timers.add(due, self)  # (one already past: within 50 ms)

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; repeated headers joined by ", " (made when first asked for)."""
        headers = self._headers
        if headers is None:
            headers = self._headers = {}
            raw = _core.head_fields(self._head) if self._head else self._raw_headers
            for index in range(0, len(raw), 2):
                _add_header(headers, raw[index], raw[index + 1])
            self._raw_headers = []
            self._head = b""
        return headers

    @headers.setter
    def headers(self, headers: dict[str, str]) -> None:
        self._headers = headers
        self._raw_headers = []
        self._head = b""

    # -- for callers ------------------------------------------------------------------------
    async def read(self) -> bytes:
        """The whole body; the connection then goes back to the pool (`release()`), or is
        dropped if reading failed (`close()`): the caller need not do either."""
        self._unbounded = True
        try:
            conn = self._conn
            if conn is not None and conn.paused:
                conn.resume()
            if not self._complete:  # a small answer is often whole with its headers
                await self._wait_until(self._is_complete)
            if self._decoder is None:  # `_take()`, inline: the body as it came
                chunks = self._chunks
                if self._skip:
                    self._drop_head()
                body = b"".join(chunks)  # (one piece: that piece itself, not a copy)
                chunks.clear()
                self._wire = 0
            else:
                body = self._take()
        except BaseException:
            self.close()
            raise
        self.release()
        return body

    def whole(self) -> bytes | None:
        """`read()` of an answer already whole and not compressed (a small answer often comes
        with its headers): its body, the connection released; else None, and the caller awaits
        `read()`. A plain method: no coroutine when there is nothing to wait for."""
        if not self._complete or self._decoder is not None or self._finished:
            return None
        chunks = self._chunks
        if self._skip:
            self._drop_head()
        body = b"".join(chunks)  # (one piece: that piece itself, not a copy)
        chunks.clear()
        self._wire = 0
        self.release()
        return body

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: each piece is everything that arrived since the last one
        (all the HTTP chunks of one or more socket reads, joined: an upstream that sends a chunk
        per line costs one piece per read, not one per line); at the end the connection is
        released."""
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        while True:
            piece = self.next_piece()
            if piece:
                return piece
            if piece is not None:  # b"": the end
                raise StopAsyncIteration
            try:
                await self.arrival()
            except BaseException:
                self.close()
                raise

    def next_piece(self) -> bytes | None:
        """`__anext__` without a coroutine, for a reader that waits itself: the next piece if one
        is at hand; None when the reader must wait (`await arrival()`, then ask again); b"" at
        the body's end (the connection then released). Raises the answer's failure (the answer
        then closed)."""
        self._waiter = None  # whoever waited has been woken: nobody waits now
        try:
            while True:
                chunks = self._chunks
                if chunks and self._decoder is None:  # `_take()`, inline (once per read)
                    if self._skip:
                        self._drop_head()
                    piece = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    chunks.clear()
                    self._wire = 0
                elif chunks or (self._complete and self._decoder is not None):
                    piece = self._take()
                elif self._complete:
                    break
                else:
                    if self._error is not None:
                        self._raise_copy(self._error)
                    return None
                conn = self._conn
                if conn is not None and conn.paused:
                    conn.resume()
                if piece:
                    return piece
                # (compressed bytes that decoded to nothing yet)
        except BaseException:
            self.close()
            raise
        self.release()
        return b""

    def reframe_into(self, reframer: _core.Reframer) -> bool:
        """Has an event stream's chunked body fed to `reframer` as each read arrives, in the
        connection's callback: the pieces `next_piece()` answers are then the reframer's output
        (zero or more whole events), and a read that completes no event wakes no reader. A
        failure of the reframer's is kept in `_sink_error`, for the reader to raise once the
        pieces before it were taken. False, and nothing changed, for any other body (not
        chunked, compressed, or already done with): the reader feeds it itself."""
        if self._dechunker is None or self._decoder is not None or self._finished:
            return False
        self._sink = reframer
        chunks = self._chunks
        if chunks:  # (body bytes that came with the head)
            body = b"".join(chunks)
            chunks.clear()
            try:
                out = reframer.feed(body)
            except Exception as exc:
                self._sink_failed(exc, reframer.before_error())
            else:
                if out:
                    chunks.append(out)
        return True

    def _sink_failed(self, exc: Exception, events: bytes = b"") -> None:
        """The reframer failed: its reader raises it, after the pieces before it and `events`,
        the whole events the failing call made before its failure (kept without its
        traceback, whose frames hold this answer)."""
        if events:
            self._chunks.append(events)
        self._sink_error = exc.with_traceback(None)
        self._wake()

    def at_end(self) -> bool:
        """Whether the whole body has arrived and been taken: `next_piece()` would answer b""."""
        return self._complete and not self._chunks and self._decoder is None

    def arrival(self) -> asyncio.Future[None]:
        """A future done when the connection has news for this answer: bytes, its end or a
        failure (`next_piece()` then says which). While it is pending the reader is waiting, so
        `read_timeout_s` of silence fails the answer with TimeoutError. A reader that stops
        waiting (cancelled) closes the answer, or releases it."""
        waiter = self._waiter = self._loop.create_future()
        self._wait_since = self._loop.time()
        return waiter

    @property
    def _buffered(self) -> int:
        """Body bytes waiting to be taken."""
        return sum(map(len, self._chunks)) - self._skip

    def _drop_head(self) -> None:
        """The head before the body in the first piece (`_skip`) sliced off, for a reader
        that takes the body as `bytes`."""
        chunks = self._chunks
        chunks[0] = chunks[0][self._skip :]
        self._skip = 0

    def _take(self) -> bytes:
        """Everything that arrived since the last take, joined; decoded if compressed (the
        decoder's tail added once the whole answer is in). Raises ResponseBroken."""
        chunks = self._chunks
        if self._skip:
            self._drop_head()
        piece = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._wire = 0
        decoder = self._decoder
        if decoder is None:
            return piece
        try:
            if piece and self._deflate_probe:  # zlib-wrapped, as the RFC says, or raw
                self._deflate_probe = False
                if piece[0] & 0x0F != 8:
                    decoder = self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
            piece = decoder.decompress(piece, MAX_ANSWER_BYTES + 1)
            if self._complete:
                piece += decoder.flush()
                self._decoder = None
            if len(piece) > MAX_ANSWER_BYTES:  # (a piece of a stream, or the whole answer)
                raise ResponseBroken(TOO_LARGE)
        except zlib.error as exc:
            if self._error is None:  # not kept alive: the caller closes the answer
                self._error = ResponseBroken("the upstream's compressed body is corrupt")
            raise ResponseBroken("the upstream's compressed body is corrupt") from exc
        return piece

    def expire_at(self, when: float) -> None:
        """Fails the body with TimeoutError at loop time `when` (a whole-request deadline)."""
        if self._complete or self._finished:
            return
        self._whole_by = when
        if self._timer is None or when < self._timer.at:
            self._arm()

    def release(self) -> None:
        """Keeps the connection alive for the next request if the whole answer arrived and the
        server allows it; otherwise closes it. Idempotent."""
        conn = self._finish()
        if conn is None:
            return
        if self._complete and self._keep_alive and self._error is None:
            conn.pool.put_back(conn)
        else:
            conn.close()

    def release_when_whole(self, within_s: float) -> None:
        """`release()` for a reader that has all it wants before the answer's end arrived (a
        stream's last event read before the terminating chunk that follows it): the connection
        goes back to the pool when the end arrives within `within_s`, and is closed otherwise
        (a new connection costs more than the wait, which holds nothing but the socket)."""
        if self._complete or self._finished or self._error is not None:
            self.release()
            return
        self._lingering = True
        when = self._loop.time() + within_s
        self._whole_by = when if self._whole_by is None else min(self._whole_by, when)
        self._arm()

    def close(self) -> None:
        """Drops the connection at once (how a stream is cancelled upstream). Idempotent."""
        if not self._complete:
            self._fail(ResponseBroken("the response was closed"))
        conn = self._finish()
        if conn is not None:
            conn.close()

    def _finish(self) -> _Connection | None:
        """Once: the caller is done with this answer; its connection, for release or close."""
        if self._finished:
            return None
        self._finished = True
        self._parser = None
        if self._timer is not None:  # (usually cancelled already, when the answer ended)
            self._cancel_timer()
        conn, self._conn = self._conn, None
        return conn

    # -- waiting --------------------------------------------------------------------------------
    def _has_headers(self) -> bool:
        return self._headers_done

    def _is_complete(self) -> bool:
        return self._complete

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        """Until `done()`; the answer's error, if one came first, is raised."""
        while not done():
            if self._error is not None:
                self._raise_copy(self._error)
            await self._wait()

    @staticmethod
    def _raise_copy(error: BaseException) -> NoReturn:
        """Raises the answer's failure as a copy of it. The raise's traceback holds the frames it
        passes, and they hold this answer: were the answer to hold the very error raised, the
        two (and all the stream they belong to) would be a reference cycle that only a full
        collection of the heap frees."""
        raise copy.copy(error)

    async def _wait(self) -> None:
        """Until the connection has news for us; `read_timeout_s` of silence is a timeout."""
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._wait_since = self._loop.time()
        try:
            await waiter
        finally:
            self._waiter = None

    def _due(self) -> float:
        """When the timer must next look: the earliest deadline that still applies."""
        if self._headers_by is not None and not self._headers_done:
            due = self._headers_by
        else:
            due = max(self._last_bytes_at, self._wait_since) + self._read_timeout_s
        if self._whole_by is not None:
            due = min(due, self._whole_by)
        return due

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.discard(self)
        self._timer = self._timers.add(self._due(), self)  # (one already past: within 50 ms)

    def on_due(self) -> None:
        """The deadline came (the client's wheel calls it, at most its resolution late)."""
        self._timer = None
        if self._complete or self._finished or self._error is not None:
            return
        now = self._loop.time()
        silent_since = max(self._last_bytes_at, self._wait_since)
        headers_by = self._headers_by
        if headers_by is not None and not self._headers_done:
            late = now >= headers_by  # the headers' deadline, not the silence, until they come
        else:
            late = self._waiter is not None and now >= silent_since + self._read_timeout_s
        if late or (self._whole_by is not None and now >= self._whole_by):
            self._timed_out()
            return
        if self._waiter is None:
            self._wait_since = now  # nobody waits: silence counts from the next wait at most
        self._arm()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = error
            self._cancel_timer()
            self._wake()

    def _timed_out(self) -> None:
        self._fail(TimeoutError("the upstream did not answer in time"))
        if self._lingering:
            self.close()
            return
        conn = self._conn
        if conn is not None:
            conn.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.discard(self)
            self._timer = None

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._complete or self._error is not None:
            return
        if exc is None and self._headers_done and self._eof_body:
            self._finish_message(keep_alive=False)  # EOF is the end of this body
        elif exc is None:
            self._fail(ResponseBroken("the upstream closed the connection mid-answer"))
        else:
            self._fail(ResponseBroken(f"the connection broke mid-answer ({type(exc).__name__})"))

    def _finish_message(self, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive
        timer = self._timer  # `_cancel_timer()`, inline (once per answer)
        if timer is not None:
            timer.discard(self)
            self._timer = None
        if self._lingering:  # nobody reads any more: back to the pool (or closed)
            self.release()
            return
        waiter = self._waiter  # `_wake()`, inline (once per answer)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _first_read(self, data: bytes) -> bytes:
        """The answer's first read. A plain head whole in it (`_core.read_head`: HTTP/1.1, a
        final status, a Content-Length body or an event stream's chunked one, no
        Content-Encoding) is read in one call: ~20K instructions less than httptools' Python
        callbacks, and no parser is made. Any other goes to httptools (`_read_head`). Returns
        the bytes after the head for the Dechunker, else b"" (as `_read_head`)."""
        head = None if self._head_only else _core.read_head(data)
        if head is None:
            parser = self._parser = httptools.HttpResponseParser(self)
            parser.set_dangerous_leniencies(  # what aiohttp's response parser tolerates too
                lenient_headers=True,
                lenient_optional_cr_before_lf=True,
                lenient_spaces_after_chunk_size=True,
            )
            return self._read_head(parser, data)
        status, end, length, self._keep_alive = head
        self._heads = 1
        self.status = status
        self._head = data[:end]
        self._head_read()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if length < 0:  # an event stream's chunked body
            self._dechunker = _core.Dechunker()
            return data[end:]
        self._left = length
        self._length_body(data, end)  # (the body not sliced off the read: `_skip`)
        return b""

    def _head_read(self) -> None:
        """The head is whole (read by `_first_read` or the parser): the read timer, if it
        waited for the headers' deadline, waits for the silence's, which comes first."""
        self._headers_done = True
        timer = self._timer
        if (
            timer is not None
            and timer.at > self._last_bytes_at + self._read_timeout_s + RESOLUTION_S
        ):
            self._arm()

    def _length_body(self, data: bytes, start: int = 0) -> None:
        """Bytes of a plain head's Content-Length body, from `start` in `data` (the head's
        read: its head before them, kept as `_skip`); the answer ends with its last byte, and
        a byte past it breaks the connection (ValueError)."""
        left = self._left
        size = len(data) - start
        if size < left:
            if size:
                self._left = left - size
                self._chunks.append(data)
                if start:  # (the answer's first read: nothing before it in `_chunks`)
                    self._skip = start
            return
        self._left = 0
        if left:
            if size == left:
                self._chunks.append(data)
                if start:
                    self._skip = start
            else:
                self._chunks.append(data[start : start + left])
        if not self._complete:
            self._finish_message(self._keep_alive)
        if size > left:
            raise ValueError("bytes after the answer")

    def _read_head(self, parser: httptools.HttpResponseParser, data: bytes) -> bytes:
        """A read before the head was whole, fed to the parser. Returns the bytes after the head
        when the answer is an event stream with a chunked body, for the Dechunker (the parser
        stopped there: `on_headers_complete` raised `_BodyByDechunker`, or was fed the head
        alone); b"" otherwise."""
        if self._head_first:  # the answer's first read, its head to be fed alone if whole here
            self._head_first = False
            data = self._head_alone_first(parser, data)
            if self._headers_done:
                return data
        heads = self._heads
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _BodyByDechunker):
                raise
            # The Dechunker reads the body from here on: the parser (~0.8 KB, and a reference
            # to this answer) is not held for the stream's life.
            self._parser = None
            return self._after_heads(data, self._heads - heads)
        if not self._headers_done:  # the head goes on in the next read
            self._wire += len(data)  # (no body yet: the head's bytes so far, its bound's count)
            if self._wire > MAX_HEAD_BYTES:
                raise HeadTooLarge(f"a head larger than {MAX_HEAD_BYTES // 1024} KiB")
            self._head_tail = (self._head_tail + data)[-2:]
        return b""

    def _head_alone_first(self, parser: httptools.HttpResponseParser, data: bytes) -> bytes:
        """`_read_head` of an event stream's first read, its head fed to the parser alone when
        whole here: an event stream's chunked body then needs no exception to stop the parser
        after the head (the exception, its traceback and the head's end found again cost ~6K
        instructions a stream). Returns the bytes after the head for the Dechunker; b"" when
        the parser read the rest (an answer it reads whole, which this way costs more: ~10K
        for the bench's static 8.3 KB stream; the pool's next streams are read as before,
        until a chunked one comes); else what is left for `_read_head` (the head goes on in
        the next read, or an interim head came first)."""
        try:
            end = head_end(data, 0)
        except ValueError:
            return data
        view = memoryview(data)
        self._head_alone = True  # (`on_headers_complete` does not raise)
        try:
            parser.feed_data(view[:end])
        finally:
            self._head_alone = False
        if self._dechunker is not None:
            self._parser = None
            return data[end:]
        if not self._headers_done:
            return data[end:]  # an interim head's: the answer's head follows
        conn = self._conn
        if conn is not None:
            conn.pool.chunked_streams = False
        if end < len(data):
            parser.feed_data(view[end:])  # (a view: the body copied once, by `on_body`)
        return b""

    def _after_heads(self, data: bytes, heads: int) -> bytes:
        """What follows the `heads`-th head that ends in `data` (interim answers' heads may come
        first; a head's blank line may have begun in the read before)."""
        before = self._head_tail
        window = before + data
        end = 0
        for _ in range(heads):
            end = head_end(window, end)
        self._head_tail = b""
        return data[end - len(before) :]

    # -- httptools callbacks (only while the connection feeds the parser) ------------------------
    # The parser is set while it calls these (`self._parser`, read directly: `_live_parser()`
    # and its `typing.cast` were two Python calls each time).

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request
            raise ResponseBroken("unexpected bytes after the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Kept as bytes: no decoding and no dictionary per header (a chunked trailer, after
        # the headers were asked for, goes into the dictionary as a header did before)
        if self._headers is None:
            self._raw_headers += (name, value)
        else:
            _add_header(self._headers, name, value)

    def _header_value(self, names: list[bytes], name: bytes) -> bytes | None:
        """The value of header `name` (lower case) from the raw headers, `names` being their
        names in lower case; through the dictionary when the header is repeated."""
        if name not in names:
            return None
        if self._headers is None and names.count(name) == 1:
            return self._raw_headers[2 * names.index(name) + 1]
        return self.headers[name.decode()].encode("latin-1")

    def on_headers_complete(self) -> None:
        self._heads += 1
        status = self._parser.get_status_code()  # type: ignore[union-attr]
        if 100 <= status < 200 and status != 101:  # interim (100 Continue, 103): the answer follows
            self._interim = True
            self.headers = {}
            self._headers = None
            return
        self.status = status
        # Every name in lower case at once (one join, one lower, one split): what framing
        # needs is read from the raw headers, the dictionary is not made.
        names = b"\n".join(self._raw_headers[0::2]).lower().split(b"\n")
        encoding = (  # (most answers have none: no call then)
            self._header_value(names, b"content-encoding") if b"content-encoding" in names else None
        )
        if encoding is not None:
            encoding = encoding.strip().lower()
            if encoding in (b"gzip", b"x-gzip"):
                self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
            elif encoding == b"deflate":
                self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
                self._deflate_probe = True
        self._head_read()
        if self._head_only:
            self._finish_message(self._parser.should_keep_alive())  # type: ignore[union-attr]
            return
        coding = (  # (most answers have a Content-Length: no call then)
            (self._header_value(names, b"transfer-encoding") or b"").strip().lower()
            if b"transfer-encoding" in names
            else b""
        )
        bodied = status not in (204, 304) and b"content-length" not in names
        self._eof_body = bodied and b"chunked" not in coding
        waiter = self._waiter  # `_wake()`, inline (once per answer)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if bodied and coding == b"chunked":
            kind = self._header_value(names, b"content-type") or b""
            if kind[:17].lower() == b"text/event-stream":
                self._dechunker = _core.Dechunker()
                self._keep_alive = self._parser.should_keep_alive()  # type: ignore[union-attr]
                if not self._head_alone:
                    conn = self._conn  # the next stream asked of this upstream: head alone
                    if conn is not None:
                        conn.pool.chunked_streams = True
                    raise _BodyByDechunker  # the parser stops here (see `_read_head`)

    def _no_body(self, body: bytes) -> None:
        """`on_body` of a HEAD answer (httptools does not know it was one)."""
        if self._complete:
            raise ResponseBroken("unexpected body")
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self._complete:
            self._finish_message(self._parser.should_keep_alive())  # type: ignore[union-attr]
