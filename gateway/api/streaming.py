"""The event-stream response: relays SSE pieces to the client in the request's own task.

Per stream there is the request's task, which awaits the next piece and sends it, and a done
callback on the server's `receive()` future, which learns of the client's `http.disconnect`
(under Granian no task: the future is the server's own). Nothing else runs per piece:

- keepalive: one deadline per stream in the open streams' timer wheel (one loop timer for all
  of them, gateway/timer_wheel.py), re-armed only when it comes, looks at the time of the last
  piece; after `keepalive_s` of silence it sends `keepalive` (a comment, or the Messages API's
  `event: ping`) while the request's task is still waiting on the upstream;
- disconnect: the callback cancels the request's task, wherever it is waiting (on the upstream
  or on a slow client); the pieces' generator is closed, so whatever it holds (the upstream
  response, the ledger entry in its `finally`) is released at once.

Both are armed when the stream first waits (the first turn of the event loop after it began),
not when it begins: a stream whose pieces are all at hand (an upstream answer read whole, a
cached answer) ends without waiting, so nothing could watch for anything, and under Granian a
pending `receive()` is not free. Granian resolves it when the response ends, from its own
thread: it takes the GIL, builds the message and wakes the event loop for a callback that does
nothing (about 25-35 us of CPU per stream over both threads, docs/benchmarks.md, "fourth
pass"). A client that left before the watcher was armed is still seen at once: the server's
`receive()` answers a disconnect that already happened.

Each piece is written in one send, so a client never reads part of an event. A stream still open
at a shutdown's deadline is ended with the route's final error event (gateway/drain.py).

The pieces are an async generator, or a `Stepped` source that this function steps to and awaits
itself (the streaming routes' relay of a reframed stream, gateway/api/chat.py): no generator
between the two, so nothing of the relay's own is made or resumed per piece. Once its first
piece is out, such a source may hand a piece that arrives while the stream waits to
`_Watch.deliver`, which sends it from the arrival's own callback (the upstream connection's
read), without waking the request's task: never its last piece, nor while a keepalive is being
sent; a send there that has to wait, or fails, is the task's to await (the send deadline, the
client-gone watch and the drain are its).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from starlette.types import Message, Receive, Send

from gateway.api.common import encode_headers
from gateway.drain import DRAIN, OpenStreams
from gateway.timer_wheel import Slot, TimerWheel

if TYPE_CHECKING:
    from gateway.state import AppState

log = logging.getLogger(__name__)

KEEPALIVE = b": keepalive\n\n"
EVENT_STREAM = b"text/event-stream; charset=utf-8"
# The context the watcher's callback runs in: it reads and sets no context variable, and a copy
# of the current context (what the callback gets by default) is one more object per stream.
CALLBACK_CONTEXT = contextvars.Context()


class Stepped:
    """Pieces that `send_event_stream` steps to itself. `step()`: the next piece; None when it
    must wait (`await arrival()`, then step again); b"" at the end. A step that raises ends the
    stream with `failed(exc)`, its last piece. `edit`: applied to each piece (None: none).
    `close(whole, drained)`: once, however the stream ended (`whole`: its end was reached;
    `drained`: a shutdown's deadline ended it); the relay bills there."""

    __slots__ = ("arrival", "edit", "step")

    step: Callable[[], bytes | None]
    arrival: Callable[[], Awaitable[None]]
    edit: Callable[[bytes], bytes] | None

    def failed(self, exc: Exception) -> bytes:
        raise NotImplementedError

    def close(self, whole: bool, drained: bool) -> Awaitable[None]:
        raise NotImplementedError

    def deliver_to(self, deliver: Deliver | None) -> None:
        """Where the source may hand a piece that arrives while the stream waits, sent from
        the arrival's own callback (`_Watch.deliver`: True if it took it); None: nowhere.
        A source that cannot (the default) always wakes the stream."""


# `_Watch.deliver`: (piece, the future the stream is waiting on) -> whether it took the piece.
Deliver = Callable[[bytes, "asyncio.Future[None]"], bool]


def _the_end() -> bytes:
    """A failed source's step: nothing follows its last piece."""
    return b""


_NOT_STEPPED = Stepped()  # (what the names hold while the pieces are a generator: unused)


async def send_event_stream(
    receive: Receive,
    send: Send,
    headers: Mapping[str, str] | list[tuple[bytes, bytes]],
    pieces: AsyncGenerator[bytes, None] | Stepped,
    keepalive_s: float,
    keepalive: bytes = KEEPALIVE,
    drain: Drain | None = None,
    last: Callable[[], bool] | None = None,
    send_timeout_s: float | None = None,
) -> None:
    """`drain`: where the stream registers itself while open, and the final event it gets if a
    shutdown's deadline ends it (gateway/drain.py). `last`: true once the piece just taken is
    the stream's last (its source knows, e.g. the upstream's [DONE] was read): that piece ends
    the body in the same send (one send less per stream), and the pieces are then run to
    their end (the relay bills) with the client no longer watched. `headers`: a mapping, or
    already in the message's form (bytes pairs, the chat route's). `send_timeout_s`: a send
    the client has not taken for that long (it stopped reading) ends the stream as if the
    client had left (None: no deadline)."""
    # The loop is the keepalive wheel's (no getpid() system call, which each
    # asyncio.get_running_loop() makes in CPython 3.11). Without the app's open streams (a
    # caller outside the routes), a wheel of its own.
    keepalives = (
        TimerWheel(asyncio.get_running_loop()) if drain is None else drain.streams.keepalives()
    )
    loop = keepalives.loop
    task = asyncio.current_task(loop)  # given the loop: no getpid() either
    assert task is not None  # noqa: S101 (always called from the request's task)
    # The call that arms the watch at the loop's next turn (if the stream is still open),
    # queued here in (a copy of) the request's context: a keepalive's send runs in it.
    watch = _Watch(loop)
    watch.start = loop.call_soon(
        _Armed, watch, task, receive, send, keepalive_s, keepalive, keepalives, send_timeout_s
    )
    drained = False
    start: Message = {
        "type": "http.response.start",
        "status": 200,
        "headers": [
            (b"content-type", EVENT_STREAM),
            *(headers if isinstance(headers, list) else encode_headers(headers)),
        ],
    }
    del headers  # this frame lives as long as the stream: it holds neither form of the headers
    # Once the first piece is out, the middleware's send wrapper may hand out the server's own
    # send (SendWithId.passthrough): no Python frame of its own per piece after that.
    passthrough: Callable[[], Send] | None = getattr(send, "passthrough", None)
    if isinstance(pieces, Stepped):
        stepped, generator = pieces, None
        step, arrival, edit = pieces.step, pieces.arrival, pieces.edit
    else:
        stepped, generator = _NOT_STEPPED, pieces
        step, arrival, edit = _the_end, loop.create_future, None
    whole = closed = False
    direct = generator is None  # the source's pieces sent from its callback once one is out
    if drain is not None:
        drain.streams.add(task)
    try:
        await send(start)
        del start
        ended = False
        while True:
            if generator is not None:
                try:
                    piece = await generator.__anext__()
                except StopAsyncIteration:
                    break
            else:
                try:
                    next_piece = step()
                    if next_piece is None:
                        piece = b""  # (the piece sent is not held while the stream waits)
                        await arrival()
                        pending = watch.pending
                        if pending is not None:  # a piece `deliver` sent has to be waited for
                            watch.pending = None
                            await pending
                            watch.last_sent = loop.time()
                            watch.waiting_on_source = True
                        continue
                    piece = next_piece
                except Exception as exc:
                    piece = stepped.failed(exc)
                    step = _the_end
                if not piece:
                    whole = True
                    break
                if edit is not None:
                    piece = edit(piece)
            if ended:
                continue  # nothing follows the last piece (its source said so)
            watch.waiting_on_source = False
            pinging = watch.pinging
            if pinging is not None and not pinging.done():
                await pinging
            if last is not None and last():
                ended = watch.finished = True  # the body ends here: a disconnect changes nothing
                await send({"type": "http.response.body", "body": piece, "more_body": False})
                watch.waiting_on_source = True  # (the send is done: the deadline's no more)
                if drain is not None:
                    drain.streams.discard(task)
                continue
            await send({"type": "http.response.body", "body": piece, "more_body": True})
            if passthrough is not None:
                send = passthrough()
                passthrough = None
            watch.last_sent = loop.time()
            watch.waiting_on_source = True
            if direct:  # from here on a piece that arrives while the stream waits is sent at once
                direct = False
                watch.direct_send, watch.edit = send, edit
                stepped.deliver_to(watch.deliver)
        if not ended:
            if whole:
                # A source that ran to its end is closed (billed; the Responses API's answer
                # kept) before the body ends, as a generator's `finally` runs before it: a
                # client that has read the end finds the stored response. Its end is reached:
                # as after a last piece, a disconnect or the drain no longer cuts the close
                # halfway (nor does the drain's event follow the last piece).
                closed = watch.finished = True
                if drain is not None:
                    drain.streams.discard(task)
                await stepped.close(True, False)
            watch.waiting_on_source = False  # the body's end is a send under the deadline
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except asyncio.CancelledError as exc:
        if watch.client_gone:
            task.uncancel()
            if watch.deaf and drain is not None and drain.streams.on_send_timeout is not None:
                drain.streams.on_send_timeout()
        elif drain is not None and drain.streams.drained(exc):
            task.uncancel()
            drained = True
        else:
            raise
    except OSError:
        pass  # the server could not write: the client is gone
    finally:
        if drain is not None:
            drain.streams.discard(task)
        pinging = watch.end()
        if generator is None:
            if not direct:  # the source was told where to deliver (a piece went out first)
                stepped.deliver_to(None)
            # A send `deliver` began that the task had not waited for yet (it was cancelled
            # first): let go, as the task's own send is when it is cancelled in it. One that
            # failed (the server refused it: the client is gone) is let go with its failure
            # read, not logged as a future's exception never retrieved.
            pending = watch.pending
            if pending is not None:
                watch.pending = None
                if isinstance(pending, asyncio.Future) and pending.done():
                    pending.exception()
            if not closed:
                await stepped.close(whole, drained)
        else:
            if drained:  # the relay bills with the drain's status if it is still suspended
                with contextlib.suppress(asyncio.CancelledError):
                    await generator.athrow(asyncio.CancelledError(DRAIN))
            await generator.aclose()
    if drained and drain is not None:
        with contextlib.suppress(OSError):
            if pinging is not None and not pinging.done():
                await pinging
            event = drain.event if isinstance(drain.event, bytes) else drain.event()
            await send({"type": "http.response.body", "body": event, "more_body": False})


class _Watch:
    """What a stream shares with its callbacks: the relay's state that they read (when the last
    piece went out, whether it waits on its source, a keepalive in flight, how the client
    went) and a stepped source's `deliver`. What only the callbacks use (the watcher of the
    client's next message, the keepalive check and the send deadline's marks) is `_Armed`,
    made by the call the stream queues as it begins, at the loop's next turn: a stream that
    ended before (its pieces all at hand) makes none of it. One object with slots each, not a
    closure cell per variable: a stream holds about a hundred objects that every full
    collection walks, and these were a sixth."""

    __slots__ = (
        "armed",
        "client_gone",
        "deaf",
        "direct_send",
        "edit",
        "finished",
        "last_sent",
        "loop",
        "pending",
        "pinging",
        "start",
        "waiting_on_source",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.client_gone = False
        self.deaf = False  # the client is gone because it stopped reading (the send deadline)
        self.finished = False  # from here on, a disconnect must not cancel the request's task
        self.waiting_on_source = True
        self.last_sent = loop.time()
        self.pinging: asyncio.Future[None] | None = None
        # `deliver`'s: the server's send and the source's edit (set once a piece is out), and
        # a send it began that the stream's task must wait for (or its failure).
        self.direct_send: Send | None = None
        self.edit: Callable[[bytes], bytes] | None = None
        self.pending: Awaitable[None] | None = None
        self.armed: _Armed | None = None
        self.start: asyncio.Handle | None = None  # the call that arms it, queued by the stream

    def deliver(self, piece: bytes, waiter: asyncio.Future[None]) -> bool:
        """A piece (whole events, not the stream's last) that arrived while the stream waits
        (`waiter`: what it awaits), sent here, in the arrival's callback: no wake of the
        stream's task and no step of its coroutines per piece. Granian's send of a body piece
        is done at once while its channel to the client has room; one that has to wait (a
        slow client), or fails, is left in `pending` for the task, which is woken to wait for
        it as it waits for its own sends (the send deadline, the client-gone watch and the
        drain stay the task's). False, nothing sent: a keepalive is being sent (the piece
        waits for it, in the task)."""
        pinging = self.pinging
        if self.finished or (pinging is not None and not pinging.done()):
            return False
        send = self.direct_send
        assert send is not None  # noqa: S101 (set before the source is told to deliver)
        edit = self.edit
        if edit is not None:
            piece = edit(piece)
        try:
            sending = send({"type": "http.response.body", "body": piece, "more_body": True})
            steps = sending.__await__()
            waiting = next(steps, _SENT)
        except Exception as exc:  # the task raises it where its own send would have
            failed = self.loop.create_future()
            failed.set_exception(exc)
            self.pending = failed
            self.waiting_on_source = False
            waiter.set_result(None)
            return True
        if waiting is _SENT:
            self.last_sent = self.loop.time()
            return True
        self.pending = _Rest(steps, waiting)
        self.waiting_on_source = False
        waiter.set_result(None)
        return True

    def end(self) -> asyncio.Future[None] | None:
        """Once the stream has ended: no callback runs again, and nothing here refers back to
        the stream (the timer's and the watcher's references are dropped, and the armed
        watch's to the task), so reference counting frees it all at once. Returns the
        keepalive send still in flight, if any."""
        self.finished = True
        start = self.start
        if start is not None:
            self.start = None
            start.cancel()
        armed = self.armed
        if armed is not None:
            self.armed = None
            armed.end()
        return self.pinging


class _Armed:
    """A stream's watch once it first waits (the first turn of the loop after it began): the
    keepalive check (a deadline in the wheel, re-armed only when it comes, looking at the time
    of the last piece) with the send deadline's marks, and the watcher of the client's next
    message. Made by the call `_Watch` queues, in a copy of the request's context."""

    __slots__ = (
        "context",
        "keepalive",
        "keepalive_s",
        "keepalives",
        "receive",
        "send",
        "send_timeout_s",
        "slot",
        "stalled_on",
        "stalled_since",
        "task",
        "watch",
        "watcher",
    )

    def __init__(
        self,
        watch: _Watch,
        task: asyncio.Task[Any],
        receive: Receive,
        send: Send,
        keepalive_s: float,
        keepalive: bytes,
        keepalives: TimerWheel,
        send_timeout_s: float | None,
    ) -> None:
        watch.start = None
        watch.armed = self
        # Set first: if arming fails below (the server's receive() refusing), `end()` still
        # finds them, and the stream's end still closes its source.
        self.watcher: asyncio.Future[Message] | None = None
        self.slot: Slot | None = None
        self.watch = watch
        self.task: asyncio.Task[Any] | None = task
        self.receive = receive
        self.send = send
        self.keepalive_s = keepalive_s
        self.keepalive = keepalive
        self.keepalives = keepalives
        # The send deadline, checked by the keepalive check: the send it found pending (its
        # `stalled_on` mark: the last send's time and the ping then in flight, which change
        # once a send completes) and since when it saw it pending.
        self.send_timeout_s = send_timeout_s
        self.stalled_on: tuple[float, asyncio.Future[None] | None] | None = None
        self.stalled_since = 0.0
        self.context = contextvars.copy_context()  # (this call runs in the request's, copied)
        now = watch.loop.time()
        if watch.finished:
            # The send ending the body is under its deadline only; it may come after this
            # (a source's close that awaits, the body's end after it): `on_due` tells.
            self.slot = keepalives.add(now + keepalive_s, self)
            return
        # The client's next message, re-armed until the disconnect.
        self.watcher = _watch(receive, self.on_message)
        self.slot = keepalives.add(max(watch.last_sent + keepalive_s, now), self)

    def on_message(self, message: asyncio.Future[Message]) -> None:
        watch = self.watch
        if watch.finished or message.cancelled() or message.exception() is not None:
            return
        if message.result()["type"] != "http.disconnect":
            self.watcher = _watch(self.receive, self.on_message)  # not the end yet: wait again
            return
        watch.client_gone = True
        if self.task is not None:
            self.task.cancel()

    def on_due(self) -> None:
        """The keepalive check (the wheel calls it): a comment after `keepalive_s` of silence;
        with a send pending (a piece's or a keepalive's), the send deadline instead."""
        self.slot = None
        watch = self.watch
        loop = watch.loop
        now = loop.time()
        pinging = watch.pinging
        if watch.finished:
            # The stream's end is reached: no keepalive, and a disconnect changes nothing, but
            # the send of the body's end is under the deadline like any other (the source's
            # close, or its run to its end after the last piece, is not: checked again later).
            if watch.waiting_on_source:
                self.slot = self.keepalives.add(now + self.keepalive_s, self)
            else:
                self.sending(now, pinging)
            return
        if not watch.waiting_on_source or (pinging is not None and not pinging.done()):
            self.sending(now, pinging)
            return
        self.stalled_on = None
        if now - watch.last_sent >= self.keepalive_s:
            ping = _ping(self.send, self.keepalive)
            pinging = watch.pinging = loop.create_task(ping, context=self.context)
            pinging.add_done_callback(_ignore_result)
            watch.last_sent = now
        self.slot = self.keepalives.add(watch.last_sent + self.keepalive_s, self)

    def sending(self, now: float, pinging: asyncio.Future[None] | None) -> None:
        """A send is pending at a check: the client has not taken it yet. One still pending
        `send_timeout_s` after a check first saw it (so after that long, at most a check's
        interval more) means the client stopped reading: the stream ends as if it had left
        (billed 499 for what was generated), and its upstream is let go. Until then the next
        check comes after another `keepalive_s`, or at the deadline if sooner."""
        watch = self.watch
        mark = (watch.last_sent, pinging)
        timeout_s = self.send_timeout_s
        if mark != self.stalled_on:
            self.stalled_on, self.stalled_since = mark, now
        elif timeout_s is not None and now - self.stalled_since >= timeout_s:
            log.info("a stream's client took nothing for %.0f s: ended", now - self.stalled_since)
            watch.client_gone = watch.deaf = True
            if pinging is not None:
                pinging.cancel()
            if self.task is not None:
                self.task.cancel()
            return
        due = now + self.keepalive_s
        if timeout_s is not None:
            due = min(due, self.stalled_since + timeout_s)
        self.slot = self.keepalives.add(due, self)

    def end(self) -> None:
        """The stream has ended (`_Watch.end`): the wheel's and the watcher's references to
        this object are dropped, and this object's to the task."""
        if self.slot is not None:
            self.slot.discard(self)
            self.slot = None
        watcher = self.watcher
        if watcher is not None:
            self.watcher = None
            watcher.remove_done_callback(self.on_message)
            watcher.cancel()
        self.task = None


_SENT: Any = object()  # (what `next` answers for a send that is done)


class _Rest:
    """The rest of a send that `deliver` began and that had to wait: awaited by the stream's
    task as if it had begun the send itself (what the send yielded is yielded to the task
    first; cancellation is thrown into the send)."""

    __slots__ = ("steps", "waiting")

    def __init__(self, steps: Any, waiting: Any) -> None:
        self.steps = steps
        self.waiting = waiting

    def __await__(self) -> Generator[Any, None, None]:
        steps, waiting = self.steps, self.waiting
        while True:
            try:
                yield waiting
            except BaseException as exc:
                throw = getattr(steps, "throw", None)
                if throw is None:
                    raise
                try:
                    waiting = throw(exc)
                except StopIteration:
                    return
                continue
            waiting = next(steps, _SENT)
            if waiting is _SENT:
                return


def send_route_stream(
    state: AppState,
    receive: Receive,
    send: Send,
    headers: Mapping[str, str] | list[tuple[bytes, bytes]],
    pieces: AsyncGenerator[bytes, None] | Stepped,
    keepalive: bytes,
    drain_event: bytes | Callable[[], bytes],
    last: Callable[[], bool] | None = None,
) -> Coroutine[Any, Any, None]:
    """`send_event_stream` as every route's stream (live or a cache hit) is sent: with the
    app's `[server.streams]` keepalive and send deadline, read here only, and registered with
    the app's open streams (`drain_event`: the route's last event if the drain ends it). A
    plain function that returns the coroutine: no frame of its own while the stream runs."""
    streams = state.settings.server.streams
    return send_event_stream(
        receive,
        send,
        headers,
        pieces,
        streams.keepalive_s,
        keepalive,
        Drain(state.streams, drain_event),
        last,
        streams.send_timeout_s,
    )


class Drain(NamedTuple):
    streams: OpenStreams
    # The last event of a stream ended by the drain, in the route's own format; a function when
    # it depends on what the stream sent (the Responses API numbers its events).
    event: bytes | Callable[[], bytes]


def _body(piece: bytes) -> Message:
    return {"type": "http.response.body", "body": piece, "more_body": True}


async def _ping(send: Send, keepalive: bytes) -> None:
    """The keepalive's send as a task of its own (`send` may return any awaitable)."""
    await send(_body(keepalive))


def _ignore_result(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()  # a failed keepalive means the client left: the watcher handles it


def _watch(
    receive: Receive, on_message: Callable[[asyncio.Future[Message]], None]
) -> asyncio.Future[Message]:
    """The client's next message as a future with `on_message` as its done callback. Granian's
    `receive()` (once the body is read: gateway/api/middleware.py) already is such a future, so
    no task is made per stream; another server's coroutine becomes a task, as before."""
    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(on_message, context=CALLBACK_CONTEXT)
    return watcher
