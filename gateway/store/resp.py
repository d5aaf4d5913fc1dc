"""A lean Redis client for the store's hot path: RESP2 over asyncio Protocols, multiplexed.

Each connection is an asyncio.Protocol with a hiredis Reader and a FIFO of futures: Redis answers
a connection's commands in the order they were sent, so any number of callers share a connection
without waiting for each other (pipelining). No pool checkout, no retry layer, no asyncio.timeout
per command: one timer per connection fails it when replies are owed and nothing has arrived for
`command_timeout_s`.

Failures (connect refused or timed out, a reply overdue, EOF, reset, a malformed reply) fail every
reply owed on that connection with RespConnectionError and drop the connection; the next command
opens a new one (one connect at a time, shared by every caller waiting for it). A cancelled caller
leaves its place in the FIFO: the reply is read and discarded, the others stay in step; a command
sent with `undo` (the admission, which reserves) hands its reply to `undo` instead, so that what
the command took is given back when its caller went away before the reply.

Decision record: docs/decisions/0010-redis-hot-path-client.md
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import hiredis

__all__ = [
    "RespClient",
    "RespConnectionError",
    "RespError",
    "RespNotSent",
    "RespReplyError",
    "RespTimeoutError",
]

_log = logging.getLogger("klawd.store")


class RespError(Exception):
    """Base of this module's errors."""


class RespReplyError(RespError):
    """An error reply (`-ERR …`): the message as Redis sent it."""


class RespConnectionError(RespError):
    """The connection failed or was lost: the command's outcome on the server is unknown."""


class RespTimeoutError(RespConnectionError):
    """Replies were owed and none arrived within the command timeout."""


class RespNotSent(RespConnectionError):
    """`execute`'s command was never written (no connection could be opened, or the one it was
    given was lost already): it did not run. Its cause is the connection's error."""


class _ProtocolError(Exception):
    pass


def _copy(error: RespConnectionError) -> RespConnectionError:
    return error.__class__(*error.args)


_MORE = object()  # hiredis: no complete reply buffered yet
# `RespClient.send` writes at once only after this long without a command (seconds): at one
# request at a time the previous request's commands are a millisecond old; under load they come
# every few tens of microseconds. Read on a clock of its own: uvloop's `loop.time()` counts whole
# milliseconds, so with it the rule meant "another millisecond tick" (about 40 % of requests one
# at a time, whatever their spacing; docs/decisions/0010, issue 19u).
QUIET_S = 0.0002
_quiet_clock = time.perf_counter
_PING = hiredis.pack_command(("PING",))  # a subscribed connection answers [b"pong", b""]

# Query arguments redis-py accepts that only tune its own pool (which the store keeps for
# everything else): harmless here. Any other argument sends the caller back to redis-py.
_IGNORED_QUERY = {"max_connections", "timeout", "health_check_interval", "socket_read_size"}


def _query_float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"Invalid value for '{name}' in connection URL.") from None
    if not number > 0:
        raise ValueError(f"'{name}' must be positive")
    return number


Undo = Callable[[Any], None]


class _Connection(asyncio.Protocol):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        command_timeout_s: float,
        undo: dict[asyncio.Future[Any], Undo] | None = None,
    ) -> None:
        self._loop = loop
        self._timeout = command_timeout_s
        self._reader = hiredis.Reader(
            protocolError=_ProtocolError, replyError=RespReplyError, notEnoughData=_MORE
        )
        self.pending: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The timer's context: it is armed by a caller (a request), whose context it would keep
        # until it fires; `_check` reads no context variable.
        self._timer_context = contextvars.Context()
        self._progress = 0.0  # the last bytes read, or when replies began to be owed
        self.lost: RespConnectionError | None = None
        self.on_lost: Callable[[_Connection], None] | None = None  # the client forgets it
        # Commands of this turn of the event loop, written together at its end (`_flush`).
        self.corked: list[bytes] = []
        # The client's: future -> what to do with its reply if its caller went away (`undo`).
        self.undo: dict[asyncio.Future[Any], Undo] = {} if undo is None else undo

    # -- asyncio.Protocol -----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._progress = self._loop.time()
        reader = self._reader
        pending = self.pending
        undo = self.undo
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except _ProtocolError:
                self.fail(RespConnectionError("malformed reply from redis"))
                return
            if reply is _MORE:
                return
            if not pending:
                self.fail(RespConnectionError("unexpected reply from redis"))
                return
            future = pending.popleft()
            if not future.done():
                future.set_result(reply)
                if undo:
                    undo.pop(future, None)
            elif undo:  # a cancelled caller's reply is dropped here, or handed to its undo
                then = undo.pop(future, None)
                if then is not None:
                    _undo(then, reply)

    def eof_received(self) -> bool | None:
        self.fail(RespConnectionError("redis closed the connection"))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        message = "redis closed the connection" if exc is None else f"connection lost: {exc!r}"
        self.fail(RespConnectionError(message))

    # -- commands -------------------------------------------------------------------------------
    def send(self, payload: bytes, replies: int) -> list[asyncio.Future[Any]]:
        """Writes `payload` (`replies` packed commands); one future per reply, in order."""
        self._will_owe()
        create = self._loop.create_future
        futures = [create() for _ in range(replies)]
        self.pending.extend(futures)
        self._write(payload)
        return futures

    def send_one(self, payload: bytes) -> asyncio.Future[Any]:
        self._will_owe()
        future = self._loop.create_future()
        self.pending.append(future)
        self._write(payload)
        return future

    def _write(self, payload: bytes) -> None:
        """Commands sent during one turn of the event loop leave in one write at its end: one
        system call here and one read on the server for all the requests admitted in that turn
        (a write per command cost both sides a system call each)."""
        if not self.corked:
            self._loop.call_soon(self._flush)
        self.corked.append(payload)

    def send_now(self, payload: bytes) -> asyncio.Future[Any]:
        """One command written at once, on a connection nothing else waits on (`RespClient.send`
        checks): its caller goes on working while the reply travels."""
        self._will_owe()
        future = self._loop.create_future()
        self.pending.append(future)
        self._transport.write(payload)  # type: ignore[union-attr]
        return future

    def _flush(self) -> None:
        corked, self.corked = self.corked, []
        if self.lost is None and corked:
            self._transport.write(  # type: ignore[union-attr]
                corked[0] if len(corked) == 1 else b"".join(corked)
            )

    def _will_owe(self) -> None:
        """Before a write: a lost connection refuses it; the first reply owed starts the clock."""
        if self.lost is not None:
            raise _copy(self.lost)
        if not self.pending:
            self._progress = self._loop.time()
            if self._timer is None:
                self._timer = self._loop.call_at(
                    self._progress + self._timeout, self._check, context=self._timer_context
                )

    def _check(self) -> None:
        """The connection's one timer: re-armed while replies are owed, idle otherwise."""
        self._timer = None
        if not self.pending or self.lost is not None:
            return
        deadline = self._progress + self._timeout
        if self._loop.time() + 0.001 >= deadline:  # timers may fire a hair early (uvloop: ms)
            self.fail(RespTimeoutError(f"no reply from redis within {self._timeout:g} s"))
        else:
            self._timer = self._loop.call_at(deadline, self._check, context=self._timer_context)

    def fail(self, error: RespConnectionError) -> None:
        """Drops the connection: every reply owed fails with `error` (once; later calls no-op)."""
        if self.lost is not None:
            return
        self.lost = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transport is not None:
            self._transport.abort()
        pending = self.pending
        undo = self.undo
        while pending:
            future = pending.popleft()
            if undo:  # no reply will come: whether the command ran is unknown
                then = undo.pop(future, None)
                if then is not None and future.done():  # its caller went away: told so
                    _undo(then, _copy(error))
            if not future.done():
                future.set_exception(_copy(error))  # one instance each: tracebacks stay apart
        if self.on_lost is not None:
            self.on_lost(self)


def _undo(then: Undo, reply: Any) -> None:
    try:
        then(reply)
    except Exception:  # a reply of nobody's must not break the connection's others
        _log.exception("undoing a cancelled command's effect failed")


class RespClient:
    """`redis://` / `rediss://` only; a few connections (default 2), each shared by every caller."""

    def __init__(
        self,
        host: str,
        port: int = 6379,
        *,
        username: str | None = None,
        password: str | None = None,
        db: int = 0,
        tls: bool = False,
        connections: int = 2,
        connect_timeout_s: float = 1.0,
        command_timeout_s: float = 2.0,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be at least 1")
        self.host = host
        self.port = port
        self.db = db
        self._username = username
        self._password = password
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self._size = connections
        self._connect_timeout = connect_timeout_s
        self._command_timeout = command_timeout_s
        self._connections: list[_Connection] = []  # live, ready (authenticated, db selected)
        self._connecting: asyncio.Task[_Connection] | None = None
        self._closed = False
        # A subscription silent this long is asked for a PING (see `subscribe`).
        self.subscription_check_s = 5.0
        self._last_command = float("-inf")  # `_quiet_clock` at the last command (`send`)
        # future -> what to do with its reply if its caller is cancelled first (shared by the
        # connections: `execute(..., undo=)` and `send(..., undo=)`)
        self._undo: dict[asyncio.Future[Any], Undo] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        connections: int = 2,
        connect_timeout_s: float = 1.0,
        command_timeout_s: float = 2.0,
    ) -> RespClient:
        """The basics of redis-py's URL forms; anything else raises ValueError (use redis-py).

        `redis[s]://[[user]:password@]host[:port][/db][?db=N&socket_timeout=S&…]`; as in
        redis-py, `socket_connect_timeout` / `socket_timeout` in the URL override the arguments.
        """
        parsed = urlparse(url)
        if parsed.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported scheme {parsed.scheme!r}: only redis:// and rediss://")
        if parsed.fragment or parsed.params:
            raise ValueError("unsupported URL form")
        db: int | None = None
        for name, values in parse_qs(parsed.query, keep_blank_values=True).items():
            value = values[0]
            if name == "db":
                try:
                    db = int(value)
                except ValueError:
                    raise ValueError("Invalid value for 'db' in connection URL.") from None
            elif name == "socket_timeout":
                command_timeout_s = _query_float(name, value)
            elif name == "socket_connect_timeout":
                connect_timeout_s = _query_float(name, value)
            elif name == "protocol" and value == "2":
                pass
            elif name not in _IGNORED_QUERY:
                raise ValueError(f"unsupported URL argument {name!r}")
        if db is None:
            db = 0
            path = unquote(parsed.path).replace("/", "")
            if path:
                try:
                    db = int(path)
                except ValueError:
                    raise ValueError(f"unsupported URL path {parsed.path!r}") from None
        if db < 0:
            raise ValueError("db must not be negative")
        try:
            port = parsed.port or 6379
        except ValueError as exc:  # a port out of range or not a number
            raise ValueError(str(exc)) from None
        return cls(
            unquote(parsed.hostname) if parsed.hostname else "localhost",
            port,
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            db=db,
            tls=parsed.scheme == "rediss",
            connections=connections,
            connect_timeout_s=connect_timeout_s,
            command_timeout_s=command_timeout_s,
        )

    # -- commands -------------------------------------------------------------------------------
    async def execute(self, *args: Any, undo: Undo | None = None) -> Any:
        """One command's reply; an error reply raises RespReplyError (`str()` is its message).
        `undo`: called with the reply (an error reply as a RespReplyError value) if the caller
        is cancelled after the command was sent and before its reply was read, to give back
        what the command took; with the connection's error (a RespConnectionError value) if the
        connection is lost first: whether the command ran is then unknown."""
        payload = hiredis.pack_command(args)
        try:
            connection = self._pick()
            if connection is None:
                connection = await self._connect()
            future = connection.send_one(payload)
        except RespConnectionError as exc:
            raise RespNotSent(*exc.args) from exc
        if undo is None:
            reply = await future
        else:
            self._undo[future] = undo
            try:
                reply = await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():  # the reply came with the cancel
                    _undo(undo, future.result())
                raise
        if type(reply) is RespReplyError:
            raise reply
        return reply

    def send(self, *args: Any, undo: Undo | None = None) -> tuple[asyncio.Future[Any], bool] | None:
        """`execute` without waiting: the future of the command's reply (an error reply as a
        RespReplyError value) and whether it was written at once. At once when the client is
        quiet (no command for `QUIET_S`) and a connection idle (nothing owed, nothing queued):
        the caller goes on working while it travels (an admission overlapped with the upstream
        call's preparation, gateway/admission_gate.py). Otherwise (commands coming) it is
        queued with the loop turn's others, as `execute` queues it, and the caller should await
        it now: measured, an at-once write under load cost the worker 10-15 % more CPU per
        single answer (docs/decisions/0010). None: no connection open (call `execute`). The
        caller must await the future or retrieve its exception (a lost connection sets
        RespConnectionError), or cancel it: `undo` is then called with the reply when it comes
        (as in `execute`)."""
        return self.send_packed(hiredis.pack_command(args), undo)

    def send_packed(
        self, payload: bytes, undo: Undo | None = None
    ) -> tuple[asyncio.Future[Any], bool] | None:
        """`send` of a command packed already (`hiredis.pack_command`'s bytes)."""
        connections = self._connections
        if not connections:
            return None
        now = _quiet_clock()
        if now - self._last_command >= QUIET_S:
            for connection in connections:
                if not connection.pending and not connection.corked:
                    try:
                        future = connection.send_now(payload)
                    except RespConnectionError:
                        return None
                    if undo is not None:
                        self._undo[future] = undo
                    self._last_command = now
                    return future, True
        picked = self._pick(now)
        if picked is None:
            return None
        try:
            future = picked.send_one(payload)
        except RespConnectionError:  # lost: `execute` says so
            return None
        if undo is not None:
            self._undo[future] = undo
        return future, False

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Every command in one write on one connection; the replies in order, error replies as
        RespReplyError values. A lost connection raises RespConnectionError for the whole batch."""
        if not commands:
            return []
        payload = b"".join([hiredis.pack_command(command) for command in commands])
        connection = self._pick()
        if connection is None:
            connection = await self._connect()
        futures = connection.send(payload, len(commands))
        try:
            return [await future for future in futures]
        except BaseException:
            for future in futures:
                if not future.done():
                    future.cancel()  # its reply is discarded when it comes
                elif not future.cancelled():
                    future.exception()  # retrieved: no "never retrieved" log
            raise

    def _pick(self, now: float | None = None) -> _Connection | None:
        """The connection already holding commands of this turn of the loop (they leave in one
        write), else the live one owing the fewest replies; grows to `connections` when all are
        busy (the caller does not wait for the new one). None: no live connection, connect
        first. `now`: `_quiet_clock()`, if the caller has read it."""
        best: _Connection | None = None
        if self._connections:
            self._last_command = _quiet_clock() if now is None else now
        for connection in self._connections:
            if connection.corked:
                return connection
            if best is None or len(connection.pending) < len(best.pending):
                best = connection
        if best is None:
            if self._closed:
                raise RespConnectionError("client closed")
            return None
        if best.pending and len(self._connections) < self._size and self._connecting is None:
            self._start_connecting()
        return best

    # -- connecting -----------------------------------------------------------------------------
    async def _connect(self) -> _Connection:
        task = self._connecting or self._start_connecting()
        # shielded: a cancelled caller must not cancel the connect the others are waiting for
        return await asyncio.shield(task)

    def _start_connecting(self) -> asyncio.Task[_Connection]:
        # In a context of its own: both loops run a transport's callbacks in the context current
        # when it was made, and the caller that (re)connects may be a request (its log record,
        # its admission's gate), which the connection outlives.
        task = asyncio.get_running_loop().create_task(self._open(), context=contextvars.Context())
        self._connecting = task
        task.add_done_callback(self._connect_done)
        return task

    def _connect_done(self, task: asyncio.Task[_Connection]) -> None:
        if self._connecting is task:
            self._connecting = None
        if not task.cancelled():
            task.exception()  # retrieved here: nobody may be awaiting it

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = _Connection(loop, self._command_timeout, self._undo)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await loop.create_connection(
                    lambda: connection,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
                handshake = self._handshake()
                if handshake:
                    payload = b"".join([hiredis.pack_command(c) for c in handshake])
                    for reply in [await f for f in connection.send(payload, len(handshake))]:
                        if isinstance(reply, RespReplyError):
                            raise RespConnectionError(f"redis refused the connection: {reply}")
        except RespConnectionError as exc:
            connection.fail(exc)
            raise
        except TimeoutError:
            error: RespConnectionError = RespTimeoutError(
                f"could not connect to redis within {self._connect_timeout:g} s"
            )
            connection.fail(error)
            raise error from None
        except OSError as exc:
            error = RespConnectionError(f"could not connect to redis: {exc}")
            connection.fail(error)
            raise error from None
        except BaseException:  # cancelled (close()): nothing may be left open
            connection.fail(RespConnectionError("connect cancelled"))
            raise
        if connection.lost is not None:
            raise _copy(connection.lost)
        if self._closed:
            connection.fail(RespConnectionError("client closed"))
            raise RespConnectionError("client closed")
        connection.on_lost = self._forget
        self._connections.append(connection)
        return connection

    def _handshake(self) -> list[tuple[Any, ...]]:
        """`AUTH` and `SELECT`, as the URL asks, before a connection is used."""
        handshake: list[tuple[Any, ...]] = []
        if self._password is not None or self._username is not None:
            credentials = (
                (self._username, self._password or "")
                if self._username is not None
                else (self._password,)
            )
            handshake.append(("AUTH", *credentials))
        if self.db:
            handshake.append(("SELECT", self.db))
        return handshake

    # -- pub/sub --------------------------------------------------------------------------------
    async def subscribe(
        self, channel: str, on_subscribed: Callable[[], None] | None = None
    ) -> AsyncIterator[bytes]:
        """The messages published on `channel` from now on, on a connection of their own (a
        subscribed connection takes no other command). Connecting, `AUTH` and the subscription's
        confirmation are bounded by the connect timeout; `on_subscribed` is called once it is
        confirmed. Then it waits for messages as long as it takes, and checks the connection
        itself: after `subscription_check_s` without a byte from Redis it sends a `PING`, which
        must be answered within the command timeout (a connection that died without a word,
        e.g. behind a NAT or a firewall that forgot it, is found within the two; TCP keepalive
        is on too). A lost connection, an unanswered `PING`, a refusal or a malformed reply
        raises RespConnectionError: subscribe again (messages published meanwhile are lost)."""
        loop = asyncio.get_running_loop()
        parser = hiredis.Reader(
            protocolError=_ProtocolError, replyError=RespReplyError, notEnoughData=_MORE
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError:
            raise RespTimeoutError(
                f"could not connect to redis within {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise RespConnectionError(f"could not connect to redis: {exc}") from None
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            commands = [*self._handshake(), ("SUBSCRIBE", channel)]
            writer.write(b"".join([hiredis.pack_command(c) for c in commands]))
            owed = len(commands)  # replies to the handshake and the subscription
            wait_until = loop.time() + self._connect_timeout  # for them, then for any byte
            pinged = False  # a PING is owed an answer by `wait_until`
            while True:
                try:
                    async with asyncio.timeout_at(wait_until):
                        data = await reader.read(65536)
                except TimeoutError:
                    if owed:
                        raise RespTimeoutError(
                            "redis did not confirm the subscription within "
                            f"{self._connect_timeout:g} s"
                        ) from None
                    if pinged:
                        raise RespTimeoutError(
                            "redis did not answer the subscription's PING within "
                            f"{self._command_timeout:g} s"
                        ) from None
                    writer.write(_PING)
                    pinged = True
                    wait_until = loop.time() + self._command_timeout
                    continue
                if not data:
                    raise RespConnectionError("redis closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not _MORE:
                    if owed:
                        owed -= 1
                        if isinstance(reply, RespReplyError):
                            raise RespConnectionError(f"redis refused the subscription: {reply}")
                        if not owed and on_subscribed is not None:
                            on_subscribed()
                    elif type(reply) is list and len(reply) == 3 and reply[0] == b"message":
                        yield reply[2]
                    elif type(reply) is list and reply and reply[0] == b"pong":
                        pinged = False
                if not owed and not pinged:
                    wait_until = loop.time() + self.subscription_check_s
        except _ProtocolError:
            raise RespConnectionError("malformed reply from redis") from None
        except OSError as exc:
            raise RespConnectionError(f"connection lost: {exc!r}") from None
        finally:
            writer.close()

    def _forget(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.remove(connection)

    async def close(self) -> None:
        """Fails whatever is owed with RespConnectionError and closes every connection."""
        self._closed = True
        task = self._connecting
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # its outcome no longer matters
        for connection in list(self._connections):
            connection.fail(RespConnectionError("client closed"))
        self._connections.clear()
