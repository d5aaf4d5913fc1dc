"""send_event_stream: pieces relayed in order, keepalive while silent, disconnect handling."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import pytest

from gateway.api.streaming import KEEPALIVE, Drain, Stepped, send_event_stream
from gateway.drain import OpenStreams, is_drain
from tests.live_bound import within


class Client:
    """The ASGI side: records what is sent; `leave()` makes receive() answer http.disconnect."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.left = asyncio.Event()
        self.got_body = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message.get("body"):
            self.got_body.set()

    def bodies(self) -> list[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


async def cancellations_left() -> int:
    """The request's task's cancellations still pending once `send_event_stream` returned
    (0: it took back any it got); a stray one is raised at the loop's next turn, here."""
    task = asyncio.current_task()
    assert task is not None
    await asyncio.sleep(0)
    return task.cancelling()


def test_pieces_are_sent_in_order_each_in_one_send_then_the_end() -> None:
    async def main() -> Client:
        client = Client()

        async def pieces() -> AsyncGenerator[bytes, None]:
            for i in range(3):
                yield f"data: {i}\n\n".encode()

        await send_event_stream(client.receive, client.send, {"x-a": "b"}, pieces(), 30)
        return client

    client = asyncio.run(within(main(), 5))
    start = client.sent[0]
    assert start["status"] == 200
    assert (b"content-type", b"text/event-stream; charset=utf-8") in start["headers"]
    assert (b"x-a", b"b") in start["headers"]
    assert client.bodies() == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert client.sent[-1]["more_body"] is False


def test_a_source_that_knows_its_last_piece_ends_the_body_with_it_and_still_runs_to_its_end() -> (
    None
):
    """`last`: the last piece is sent as the body's end (no empty send after it); the source
    then runs to its end (the relay bills there) even though the client leaves at once."""

    async def main() -> tuple[Client, bool, int]:
        client = Client()
        billed = False
        done = False

        async def send_then_leave(message: dict[str, Any]) -> None:
            await client.send(message)
            if message["type"] == "http.response.body" and not message["more_body"]:
                client.left.set()
                await asyncio.sleep(0)

        async def pieces() -> AsyncGenerator[bytes, None]:
            nonlocal billed, done
            try:
                yield b"data: 0\n\n"
                done = True
                yield b"data: [DONE]\n\n"
            finally:
                for _ in range(3):  # the relay's billing awaits the store
                    await asyncio.sleep(0)
                billed = True

        await send_event_stream(
            client.receive, send_then_leave, {}, pieces(), 30, last=lambda: done
        )
        return client, billed, await cancellations_left()

    client, billed, cancelling = asyncio.run(within(main(), 5))
    assert client.bodies() == [b"data: 0\n\n", b"data: [DONE]\n\n"]
    assert [m["more_body"] for m in client.sent[1:]] == [True, False]
    assert billed
    assert cancelling == 0


def test_a_silent_source_gets_keepalives_and_then_its_piece() -> None:
    async def main() -> Client:
        client = Client()
        release = asyncio.Event()

        async def pieces() -> AsyncGenerator[bytes, None]:
            await release.wait()
            yield b"data: late\n\n"

        async def release_after_two_keepalives() -> None:
            while client.bodies().count(KEEPALIVE) < 2:
                await asyncio.sleep(0.01)
            release.set()

        waiter = asyncio.ensure_future(release_after_two_keepalives())
        await send_event_stream(client.receive, client.send, {}, pieces(), 0.05, KEEPALIVE)
        await waiter
        return client

    client = asyncio.run(within(main(), 10))
    bodies = client.bodies()
    assert bodies[-2:] == [b"data: late\n\n", b""]
    assert set(bodies[:-2]) == {KEEPALIVE} and len(bodies) >= 4


def test_a_client_that_leaves_closes_the_source_and_the_request_task_is_not_cancelled() -> None:
    async def main() -> tuple[bool, int]:
        client = Client()
        closed = asyncio.Event()

        async def pieces() -> AsyncGenerator[bytes, None]:
            try:
                yield b"data: first\n\n"
                await asyncio.Event().wait()  # an upstream that never sends again
                yield b"never"
            finally:
                closed.set()

        async def leave_after_first() -> None:
            await client.got_body.wait()
            client.left.set()

        leaver = asyncio.ensure_future(leave_after_first())
        await send_event_stream(client.receive, client.send, {}, pieces(), 30)
        await leaver
        return closed.is_set(), await cancellations_left()

    closed, cancelling = asyncio.run(within(main(), 5))
    assert closed
    assert cancelling == 0


def test_a_disconnect_right_at_the_end_does_not_cancel_the_request_task() -> None:
    """The client leaves as the last message is sent: the watcher finishes while the sender is
    on its way out, and its callback runs after the sender returned."""

    async def main() -> str:
        client = Client()
        send = client.send

        async def send_then_leave(message: dict[str, Any]) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message["more_body"]:
                client.left.set()
                await asyncio.sleep(0)

        async def pieces() -> AsyncGenerator[bytes, None]:
            yield b"data: only\n\n"

        await send_event_stream(client.receive, send_then_leave, {}, pieces(), 30)
        for _ in range(5):
            await asyncio.sleep(0)
        return "not cancelled"

    assert asyncio.run(within(main(), 5)) == "not cancelled"


def test_cancellation_from_outside_still_propagates() -> None:
    async def main() -> bool:
        client = Client()
        closed = asyncio.Event()

        async def pieces() -> AsyncGenerator[bytes, None]:
            try:
                yield b"data: first\n\n"
                await asyncio.Event().wait()
                yield b"never"
            finally:
                closed.set()

        task = asyncio.ensure_future(
            send_event_stream(client.receive, client.send, {}, pieces(), 30)
        )
        await client.got_body.wait()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return closed.is_set()
        return False

    assert asyncio.run(within(main(), 5))


def drained_run(
    block_in_send: bool, event: bytes | Callable[[], bytes] = b"data: bye\n\n"
) -> tuple[list[bytes], list[str], int]:
    """A stream ended by the drain, either while waiting on its source or while a send is in
    flight (the relay is then suspended at its yield)."""

    async def main() -> tuple[list[bytes], list[str], int]:
        client = Client()
        seen: list[str] = []
        streams = OpenStreams()
        sending = asyncio.Event()
        stall = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            await client.send(message)
            if block_in_send and message.get("body") == b"data: first\n\n":
                sending.set()
                await stall.wait()  # a slow client: the drain comes during this send

        async def pieces() -> AsyncGenerator[bytes, None]:
            try:
                yield b"data: first\n\n"
                sending.set()
                await asyncio.Event().wait()
                yield b"never"
            except asyncio.CancelledError as exc:
                seen.append("drain" if is_drain(exc) else "cancelled")
                raise
            except GeneratorExit:
                seen.append("closed")
                raise

        async def end_after_first() -> None:
            await sending.wait()
            assert len(streams) == 1
            streams.end_all()

        ender = asyncio.ensure_future(end_after_first())
        await send_event_stream(client.receive, send, {}, pieces(), 30, drain=Drain(streams, event))
        await ender
        return client.bodies(), seen, await cancellations_left() + len(streams)

    return asyncio.run(within(main(), 5))


@pytest.mark.parametrize("block_in_send", [False, True])
def test_the_drain_ends_a_stream_with_its_final_event_and_the_relay_knows(
    block_in_send: bool,
) -> None:
    bodies, seen, left = drained_run(block_in_send)
    assert bodies == [b"data: first\n\n", b"data: bye\n\n"]
    assert seen == ["drain"], "the relay saw the drain (it bills with the drain's status)"
    assert left == 0, "unregistered, and the request's task is not left cancelled"


def test_a_drain_event_can_be_written_when_the_drain_comes() -> None:
    made: list[str] = []

    def event() -> bytes:
        made.append("now")
        return b"data: bye\n\n"

    bodies, _, _ = drained_run(False, event)
    assert bodies == [b"data: first\n\n", b"data: bye\n\n"]
    assert made == ["now"]


class FutureClient(Client):
    """A server whose receive() is a future, as Granian's is: the stream watches it with a
    done callback instead of a task."""

    def __init__(self) -> None:
        super().__init__()
        self.receives = 0

    def receive_future(self) -> asyncio.Future[dict[str, Any]]:
        self.receives += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def answer(_: asyncio.Task[bool]) -> None:
            if not future.done():
                future.set_result({"type": "http.disconnect"})

        asyncio.ensure_future(self.left.wait()).add_done_callback(answer)
        return future


def test_a_server_future_is_watched_without_a_task_and_its_disconnect_closes_the_source() -> None:
    async def main() -> tuple[int, bool, int, int]:
        client = FutureClient()
        closed = asyncio.Event()
        counted = asyncio.Event()
        tasks_while_open = -1

        async def pieces() -> AsyncGenerator[bytes, None]:
            nonlocal tasks_while_open
            try:
                yield b"data: first\n\n"
                await asyncio.sleep(0)  # the stream's first wait: its watcher is armed
                tasks_while_open = len(asyncio.all_tasks())
                counted.set()
                await asyncio.Event().wait()
                yield b"never"
            finally:
                closed.set()

        tasks_before = len(asyncio.all_tasks())
        send_task = asyncio.current_task()
        assert send_task is not None

        async def leave_after_first() -> None:
            await counted.wait()
            client.left.set()

        leaver = asyncio.ensure_future(leave_after_first())
        await send_event_stream(client.receive_future, client.send, {}, pieces(), 30)
        await leaver
        await asyncio.sleep(0)
        cancelling = send_task.cancelling()
        return tasks_while_open - tasks_before, closed.is_set(), client.receives, cancelling

    new_tasks, closed, receives, cancelling = asyncio.run(within(main(), 5))
    assert new_tasks == 2, "the leaver and the fake server's own waiter, no watcher task"
    assert closed
    assert receives == 1
    assert cancelling == 0


def test_a_server_future_that_answers_other_messages_is_watched_again() -> None:
    async def main() -> tuple[int, bool]:
        client = FutureClient()
        closed = asyncio.Event()
        answers = iter([{"type": "http.request", "body": b"", "more_body": False}])

        def receive() -> asyncio.Future[dict[str, Any]]:
            message = next(answers, None)
            if message is None:
                return client.receive_future()
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            future.set_result(message)
            return future

        async def pieces() -> AsyncGenerator[bytes, None]:
            try:
                yield b"data: first\n\n"
                await asyncio.Event().wait()
                yield b"never"
            finally:
                closed.set()

        async def leave_after_first() -> None:
            await client.got_body.wait()
            await asyncio.sleep(0)
            client.left.set()

        leaver = asyncio.ensure_future(leave_after_first())
        await send_event_stream(receive, client.send, {}, pieces(), 30)
        await leaver
        return client.receives, closed.is_set()

    receives, closed = asyncio.run(within(main(), 5))
    assert receives == 1, "after the stray message, the next receive() is watched"
    assert closed


def test_a_stream_that_ended_is_freed_without_the_cycle_collector() -> None:
    """The stream's callbacks (keepalive timer, disconnect watcher) re-arm themselves by name;
    once the stream has ended they hold nothing, so reference counting frees the stream and
    what its frame held at once (a full collection of a large heap is a long pause)."""
    import gc
    import weakref

    class Marker:
        pass

    async def main() -> weakref.ref[Marker]:
        client = Client()
        held = Marker()

        async def receive() -> dict[str, Any]:
            _ = held  # the stream's receive holds the marker, as a server's holds its connection
            return await client.receive()

        async def pieces() -> AsyncGenerator[bytes, None]:
            yield b"data: 0\n\n"

        await send_event_stream(receive, client.send, {}, pieces(), 30)
        return weakref.ref(held)

    gc.collect()
    gc.disable()
    try:
        marker = asyncio.run(within(main(), 5))
        assert marker() is None
    finally:
        gc.enable()


def test_a_stream_that_never_waits_never_watches_the_client() -> None:
    """Every piece at hand (an upstream answer read whole): the stream ends before the loop
    turns, so the server's receive() is never called (under Granian a pending one costs a GIL
    hand-off and a wake of the loop when the response ends)."""

    async def main() -> tuple[int, list[bytes]]:
        client = FutureClient()

        async def pieces() -> AsyncGenerator[bytes, None]:
            yield b"data: 0\n\n"
            yield b"data: [DONE]\n\n"

        await send_event_stream(client.receive_future, client.send, {}, pieces(), 30)
        await asyncio.sleep(0)  # the call that would have armed the watcher runs (or not)
        return client.receives, client.bodies()

    receives, bodies = asyncio.run(within(main(), 5))
    assert receives == 0
    assert bodies == [b"data: 0\n\n", b"data: [DONE]\n\n", b""]


def test_a_watch_whose_arming_fails_still_ends_the_stream_and_closes_its_source() -> None:
    """The server's receive() refuses when the watch is armed (its callback fails, reported
    to the loop's handler): the stream goes on unwatched, and its end still closes the source
    (the relay bills there). Before, the half-made watch failed the stream's `finally`
    (AttributeError) ahead of the source's close."""

    async def main() -> tuple[Client, bool, list[object]]:
        client = Client()
        closed = False
        failures: list[object] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: failures.append(context.get("exception"))
        )

        def refusing() -> Awaitable[dict[str, Any]]:
            raise RuntimeError("the server's receive() refused")

        async def pieces() -> AsyncGenerator[bytes, None]:
            nonlocal closed
            try:
                yield b"data: 0\n\n"
                await asyncio.sleep(0)  # the stream waits: its watch is armed
                await asyncio.sleep(0)
                yield b"data: 1\n\n"
            finally:
                closed = True

        await send_event_stream(refusing, client.send, {}, pieces(), 30)
        return client, closed, failures

    client, closed, failures = asyncio.run(within(main(), 5))
    assert closed, "the source was closed when the stream ended"
    assert client.bodies() == [b"data: 0\n\n", b"data: 1\n\n", b""]
    assert [type(f) for f in failures] == [RuntimeError], "the arming's own failure, reported"


def test_a_client_gone_before_the_stream_waits_is_seen_at_its_first_wait() -> None:
    """The client left while the upstream was being opened (before the watcher was armed): the
    server's receive() answers that disconnect when the stream first waits, and the source is
    closed then, not at its next piece."""

    async def main() -> tuple[bool, list[bytes], int]:
        client = FutureClient()
        client.left.set()
        closed = asyncio.Event()

        async def pieces() -> AsyncGenerator[bytes, None]:
            try:
                yield b"data: first\n\n"
                await asyncio.Event().wait()  # an upstream that never sends again
                yield b"never"
            finally:
                closed.set()

        await send_event_stream(client.receive_future, client.send, {}, pieces(), 30)
        task = asyncio.current_task()
        assert task is not None
        return closed.is_set(), client.bodies(), task.cancelling()

    closed, bodies, cancelling = asyncio.run(within(main(), 5))
    assert closed
    assert bodies == [b"data: first\n\n"]
    assert cancelling == 0


class Source(Stepped):
    """A stepped source (the chat route's relay of a reframed stream is one): its pieces, a
    failure or its end as they are pushed; what it was closed with."""

    __slots__ = ("closed", "errors", "items", "waiter")

    def __init__(self, edit: Callable[[bytes], bytes] | None = None) -> None:
        self.step = self._step
        self.arrival = self._arrival
        self.edit = edit
        self.items: list[bytes | Exception] = []
        self.waiter: asyncio.Future[None] | None = None
        self.closed: tuple[bool, bool] | None = None
        self.errors: list[Exception] = []

    def push(self, *items: bytes | Exception) -> None:
        self.items += items
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _step(self) -> bytes | None:
        if not self.items:
            return None
        item = self.items.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def _arrival(self) -> asyncio.Future[None]:
        self.waiter = asyncio.get_running_loop().create_future()
        return self.waiter

    def failed(self, exc: Exception) -> bytes:
        self.errors.append(exc)
        return b"data: failed\n\n"

    async def close(self, whole: bool, drained: bool) -> None:
        await asyncio.sleep(0)  # the relay's billing awaits the store
        self.closed = (whole, drained)


def test_a_stepped_source_is_stepped_awaited_edited_and_closed_whole() -> None:
    async def main() -> tuple[Client, Source]:
        client = Client()
        source = Source(edit=lambda piece: piece.upper())

        async def feed() -> None:
            source.push(b"data: a\n\n")
            await asyncio.sleep(0.01)
            source.push(b"data: b\n\n", b"data: c\n\n")
            await asyncio.sleep(0.01)
            source.push(b"")

        feeder = asyncio.ensure_future(feed())
        await send_event_stream(client.receive, client.send, {}, source, 30)
        await feeder
        return client, source

    client, source = asyncio.run(within(main(), 5))
    assert client.bodies() == [b"DATA: A\n\n", b"DATA: B\n\n", b"DATA: C\n\n", b""]
    assert source.closed == (True, False)


def test_a_stepped_source_that_runs_to_its_end_is_closed_before_the_body_ends_once() -> None:
    """As a generator's `finally` runs before its end is sent: what the close does (the
    Responses API keeps its answer there) is done when the client reads the body's end."""

    class Noting(Source):
        __slots__ = ("client", "sent_at_close")

        def __init__(self, client: Client) -> None:
            super().__init__()
            self.client = client
            self.sent_at_close: list[int] = []

        async def close(self, whole: bool, drained: bool) -> None:
            self.sent_at_close.append(len(self.client.sent))
            await super().close(whole, drained)

    async def main() -> tuple[Client, Noting]:
        client = Client()
        source = Noting(client)
        source.push(b"data: a\n\n", b"")
        await send_event_stream(client.receive, client.send, {}, source, 30)
        return client, source

    client, source = asyncio.run(within(main(), 5))
    assert client.bodies() == [b"data: a\n\n", b""]
    assert source.sent_at_close == [2]  # the start and the piece, not the body's end
    assert source.closed == (True, False)


class SlowClosing(Source):
    """A source whose close waits (the relay's token charge, the Responses API's store write)
    until `release` is set; `closing` is set when it begins, `done` once it has run through."""

    __slots__ = ("closing", "done", "release")

    def __init__(self) -> None:
        super().__init__()
        self.closing = asyncio.Event()
        self.release = asyncio.Event()
        self.done = False

    async def close(self, whole: bool, drained: bool) -> None:
        self.closing.set()
        await self.release.wait()
        await super().close(whole, drained)
        self.done = True


def test_a_client_gone_while_a_source_that_ran_to_its_end_closes_does_not_cut_the_close() -> None:
    """Its end was reached: a client that leaves then (it read the last event) changes
    nothing, as when the last piece ends the body (`last`); the close is not cancelled."""

    async def main() -> tuple[SlowClosing, int]:
        client = FutureClient()
        source = SlowClosing()
        source.push(b"data: a\n\n", b"")

        async def leave_during_close() -> None:
            await source.closing.wait()
            client.left.set()
            for _ in range(5):
                await asyncio.sleep(0)  # the disconnect is seen
            source.release.set()

        leaver = asyncio.ensure_future(leave_during_close())
        await send_event_stream(client.receive_future, client.send, {}, source, 30)
        await leaver
        return source, await cancellations_left()

    source, cancelling = asyncio.run(within(main(), 5))
    assert source.done, "the close ran through"
    assert source.closed == (True, False)
    assert cancelling == 0


def test_the_drain_while_a_source_that_ran_to_its_end_closes_sends_no_event_after_it() -> None:
    """A stream whose end was reached is no longer the drain's: no drain event after its last
    piece (a second final event), and its close runs through."""

    async def main() -> tuple[list[bytes], SlowClosing, int]:
        client = Client()
        streams = OpenStreams()
        source = SlowClosing()
        source.push(b"data: a\n\n", b"")

        async def drain_during_close() -> None:
            await source.closing.wait()
            streams.end_all()
            for _ in range(5):
                await asyncio.sleep(0)
            source.release.set()

        ender = asyncio.ensure_future(drain_during_close())
        await send_event_stream(
            client.receive, client.send, {}, source, 30, drain=Drain(streams, b"data: bye\n\n")
        )
        await ender
        return client.bodies(), source, await cancellations_left() + len(streams)

    bodies, source, left = asyncio.run(within(main(), 5))
    assert bodies == [b"data: a\n\n", b""]
    assert source.done, "the close ran through"
    assert source.closed == (True, False)
    assert left == 0


def test_a_stepped_source_that_fails_ends_with_its_last_piece_and_is_closed_whole() -> None:
    async def main() -> tuple[Client, Source]:
        client = Client()
        source = Source()
        source.push(b"data: a\n\n", ValueError("broken"), b"data: never\n\n")
        await send_event_stream(client.receive, client.send, {}, source, 30)
        return client, source

    client, source = asyncio.run(within(main(), 5))
    assert client.bodies() == [b"data: a\n\n", b"data: failed\n\n", b""]
    assert [str(e) for e in source.errors] == ["broken"]
    assert source.closed == (True, False)


def test_a_stepped_source_gets_keepalives_while_it_waits() -> None:
    async def main() -> Client:
        client = Client()
        source = Source()

        async def release_after_two_keepalives() -> None:
            while client.bodies().count(KEEPALIVE) < 2:
                await asyncio.sleep(0.01)
            source.push(b"data: late\n\n", b"")

        waiter = asyncio.ensure_future(release_after_two_keepalives())
        await send_event_stream(client.receive, client.send, {}, source, 0.05, KEEPALIVE)
        await waiter
        return client

    bodies = asyncio.run(within(main(), 10)).bodies()
    assert bodies[-2:] == [b"data: late\n\n", b""]
    assert set(bodies[:-2]) == {KEEPALIVE} and len(bodies) >= 4


def test_a_client_gone_while_a_stepped_source_waits_closes_it_not_whole() -> None:
    async def main() -> tuple[Source, int]:
        client = FutureClient()
        source = Source()
        source.push(b"data: first\n\n")

        async def leave_after_first() -> None:
            await client.got_body.wait()
            await asyncio.sleep(0.01)  # the stream waits on its source: its watcher armed
            client.left.set()

        leaver = asyncio.ensure_future(leave_after_first())
        await send_event_stream(client.receive_future, client.send, {}, source, 30)
        await leaver
        return source, await cancellations_left()

    source, cancelling = asyncio.run(within(main(), 5))
    assert source.closed == (False, False)
    assert cancelling == 0


def test_the_drain_ends_a_waiting_stepped_source_with_its_event_and_closes_it_drained() -> None:
    async def main() -> tuple[list[bytes], Source, int]:
        client = Client()
        streams = OpenStreams()
        source = Source()
        source.push(b"data: first\n\n")

        async def end_after_first() -> None:
            await client.got_body.wait()
            assert len(streams) == 1
            streams.end_all()

        ender = asyncio.ensure_future(end_after_first())
        await send_event_stream(
            client.receive, client.send, {}, source, 30, drain=Drain(streams, b"data: bye\n\n")
        )
        await ender
        return client.bodies(), source, await cancellations_left() + len(streams)

    bodies, source, left = asyncio.run(within(main(), 5))
    assert bodies == [b"data: first\n\n", b"data: bye\n\n"]
    assert source.closed == (False, True)
    assert left == 0


def turn_clock(step_s: float = 0.001) -> asyncio.Task[None]:
    """The running loop's clock moved by the loop's own turns, `step_s` each, not by the wall:
    the deadlines (the keepalive wheel's, `asyncio.sleep`'s) come after as many turns on a
    loaded machine as on an idle one, so a time the test measures is the code's, not the
    machine's. Returns the task that turns it (cancel it when done)."""
    loop = asyncio.get_running_loop()
    now = loop.time()

    def time() -> float:
        return now

    async def turn() -> None:
        nonlocal now
        while True:
            await asyncio.sleep(0)
            now += step_s

    loop.time = time  # type: ignore[method-assign]
    return loop.create_task(turn())


async def send_with_deadline(
    client: Client,
    send: Callable[[dict[str, Any]], Awaitable[None]],
    pieces: AsyncGenerator[bytes, None],
    timeouts: list[None],
) -> None:
    """A stream with keepalives every 0.05 s and a 0.3 s send deadline, registered with open
    streams that note each stream ended by the deadline in `timeouts`."""
    streams = OpenStreams()
    streams.on_send_timeout = lambda: timeouts.append(None)
    await send_event_stream(
        client.receive,
        send,
        {},
        pieces,
        0.05,
        KEEPALIVE,
        drain=Drain(streams, b""),
        send_timeout_s=0.3,
    )


@pytest.mark.parametrize("stuck", ["piece", "keepalive"])
def test_a_send_the_client_never_takes_ends_the_stream_as_if_it_had_left(stuck: str) -> None:
    """`send_timeout_s`: a piece's send, or a keepalive's while the source is silent, that the
    client does not take (it stopped reading) ends the stream after the deadline: the source
    is closed (the relay bills, the upstream is let go), the request's task not cancelled,
    and the stream counted (the `klawd_stream_send_timeouts_total` metric)."""
    timeouts: list[None] = []

    async def main() -> tuple[bool, int, float]:
        client = Client()
        closed = asyncio.Event()
        never = asyncio.get_running_loop().create_future()

        async def deaf_send(message: dict[str, Any]) -> None:
            await client.send(message)
            body = message.get("body", b"")
            if body == KEEPALIVE if stuck == "keepalive" else body.startswith(b"data: 1"):
                await never  # the client's buffers are full, for good

        async def pieces() -> AsyncGenerator[bytes, None]:
            try:
                yield b"data: 0\n\n"
                if stuck == "keepalive":
                    await asyncio.Event().wait()  # a silent upstream: keepalives go out
                yield b"data: 1\n\n"
                yield b"data: 2\n\n"
            finally:
                closed.set()

        loop = asyncio.get_running_loop()
        clock = turn_clock()
        began = loop.time()
        await send_with_deadline(client, deaf_send, pieces(), timeouts)
        lasted = loop.time() - began
        clock.cancel()
        left = await cancellations_left()
        return closed.is_set(), left, lasted

    closed, cancelling, lasted = asyncio.run(within(main(), 5))
    assert closed
    assert cancelling == 0
    assert lasted >= 0.3
    assert len(timeouts) == 1


@pytest.mark.parametrize(
    "end",
    [
        "last-piece",
        "last-piece-at-hand",
        "generator-end",
        "stepped-end",
        "stepped-end-at-hand",
        "stepped-last-at-hand",
        "stepped-start-at-hand",
    ],
)
def test_a_body_s_end_the_client_never_takes_ends_the_stream_as_if_it_had_left(end: str) -> None:
    """The send that ends the body (the last piece with `last`, or the empty end after a
    generator's or a stepped source's end) is under the send deadline like any other: a
    client that stopped reading just before the end no longer holds the request's task. A
    stepped source that ran to its end was closed whole first (billed once, as it stays); the
    others end as a deaf client mid-stream does (closed not whole). `last-piece-at-hand`: the
    stream never waited before its last piece (the watch is armed by that send's wait). Before,
    the task waited on the end's send for good. `stepped-last-at-hand`, `stepped-start-at-hand`:
    a stepped source whose one piece is its last (the chat route's static body, an answer whole
    in one read) never waits on its source, so only a send that waits (its last piece's, or the
    response start's, which the client never takes) is what the watch is armed for."""
    timeouts: list[None] = []

    async def main() -> tuple[bool | tuple[bool, bool] | None, int, float]:
        client = Client()
        never = asyncio.get_running_loop().create_future()
        done = closed = False

        async def deaf_send(message: dict[str, Any]) -> None:
            await client.send(message)
            if end == "stepped-start-at-hand" or (
                message["type"] == "http.response.body" and not message["more_body"]
            ):
                await never  # the client's buffers are full, for good

        async def pieces() -> AsyncGenerator[bytes, None]:
            nonlocal done, closed
            try:
                yield b"data: 0\n\n"
                if end != "last-piece-at-hand":
                    await asyncio.sleep(0.01)  # the stream waits: the client is watched
                done = True
                yield b"data: [DONE]\n\n"
            finally:
                closed = True

        loop = asyncio.get_running_loop()
        clock = turn_clock()
        began = loop.time()
        streams = OpenStreams()
        streams.on_send_timeout = lambda: timeouts.append(None)
        source: AsyncGenerator[bytes, None] | Source = pieces()
        if end == "stepped-end":
            source = Source()
            source.push(b"data: 0\n\n")
            loop.call_later(0.01, source.push, b"data: [DONE]\n\n", b"")
        elif end == "stepped-end-at-hand":  # never waited before its close, which awaits
            source = Source()
            source.push(b"data: 0\n\n", b"data: [DONE]\n\n", b"")
        elif end in ("stepped-last-at-hand", "stepped-start-at-hand"):
            source = Source()
            source.push(b"data: [DONE]\n\n", b"")
            done = True  # its one piece is its last
        await send_event_stream(
            client.receive,
            deaf_send,
            {},
            source,
            0.05,
            KEEPALIVE,
            drain=Drain(streams, b""),
            last=(lambda: done) if "last" in end or "start" in end else None,
            send_timeout_s=0.3,
        )
        lasted = loop.time() - began
        clock.cancel()
        left = await cancellations_left()
        return source.closed if isinstance(source, Source) else closed, left, lasted

    closed, cancelling, lasted = asyncio.run(within(main(), 5))
    at_hand = end in ("stepped-last-at-hand", "stepped-start-at-hand")
    assert closed == (
        (True, False) if end.startswith("stepped-end") else (False, False) if at_hand else True
    )
    assert cancelling == 0
    assert lasted >= 0.3
    assert len(timeouts) == 1


def test_a_send_the_client_takes_slowly_does_not_end_the_stream() -> None:
    """Each send taken after 0.2 s, ten of them (2 s in all, longer than the 0.3 s deadline,
    each shorter): the stream is whole, and not counted as a send timeout."""
    timeouts: list[None] = []

    async def main() -> Client:
        client = Client()

        async def slow_send(message: dict[str, Any]) -> None:
            await client.send(message)
            if message.get("body"):
                await asyncio.sleep(0.2)

        async def pieces() -> AsyncGenerator[bytes, None]:
            for i in range(10):
                yield f"data: {i}\n\n".encode()

        await send_with_deadline(client, slow_send, pieces(), timeouts)
        return client

    client = asyncio.run(within(main(), 10))
    assert [b for b in client.bodies() if b != KEEPALIVE] == [
        *(f"data: {i}\n\n".encode() for i in range(10)),
        b"",
    ]
    assert timeouts == []


class DeliveringSource(Source):
    """A source that hands each piece pushed while the stream waits (nothing pending) to the
    stream's `deliver`, as a body reframed as it is read does from the connection's read."""

    __slots__ = ("deliver", "delivered")

    def __init__(self, edit: Callable[[bytes], bytes] | None = None) -> None:
        super().__init__(edit)
        self.deliver: Callable[[bytes, asyncio.Future[None]], bool] | None = None
        self.delivered: list[bytes] = []

    def deliver_to(self, deliver: Callable[[bytes, asyncio.Future[None]], bool] | None) -> None:
        self.deliver = deliver

    def push(self, *items: bytes | Exception) -> None:
        for item in items:
            waiter = self.waiter
            if (
                self.deliver is not None
                and isinstance(item, bytes)
                and item
                and not self.items
                and waiter is not None
                and not waiter.done()
                and self.deliver(item, waiter)
            ):
                self.delivered.append(item)
                continue
            super().push(item)


def test_pieces_that_arrive_while_the_stream_waits_are_sent_at_once_edited_in_order() -> None:
    """Once a piece is out, the source's pieces that arrive while the stream waits are sent
    from the arrival (`deliver`), edited; those that arrive while a send is still theirs (or
    the stream's task has been woken) go through the step; the end is the step's."""

    async def main() -> tuple[Client, DeliveringSource]:
        client = Client()
        source = DeliveringSource(edit=lambda piece: piece.upper())

        async def feed() -> None:
            source.push(b"data: a\n\n")
            await asyncio.sleep(0.01)
            source.push(b"data: b\n\n", b"data: c\n\n")
            await asyncio.sleep(0.01)
            source.push(b"data: d\n\n")
            await asyncio.sleep(0.01)
            source.push(b"")

        feeder = asyncio.ensure_future(feed())
        await send_event_stream(client.receive, client.send, {}, source, 30)
        await feeder
        return client, source

    client, source = asyncio.run(within(main(), 5))
    assert client.bodies() == [b"DATA: A\n\n", b"DATA: B\n\n", b"DATA: C\n\n", b"DATA: D\n\n", b""]
    assert source.delivered == [b"data: b\n\n", b"data: c\n\n", b"data: d\n\n"]
    assert source.closed == (True, False)


def _stream_with_deadline(
    client: Client, send: Callable[[dict[str, Any]], Awaitable[None]], source: Stepped,
    timeouts: list[None],
) -> Awaitable[None]:  # fmt: skip
    streams = OpenStreams()
    streams.on_send_timeout = lambda: timeouts.append(None)
    return send_event_stream(
        client.receive, send, {}, source, 0.05, KEEPALIVE, drain=Drain(streams, b""),
        send_timeout_s=0.3,
    )  # fmt: skip


def test_a_delivered_piece_the_client_never_takes_ends_the_stream_as_if_it_had_left() -> None:
    """A piece sent from the arrival whose send has to wait (the client stopped reading) is
    waited for by the stream's task: the send deadline ends the stream, the source closed not
    whole, the task not cancelled, the stream counted; the pieces after it never sent."""
    timeouts: list[None] = []

    async def main() -> tuple[Client, DeliveringSource, int]:
        client = Client()
        source = DeliveringSource()
        never = asyncio.get_running_loop().create_future()

        async def deaf_send(message: dict[str, Any]) -> None:
            await client.send(message)
            if message.get("body", b"").startswith(b"data: 1"):
                await never  # the client's buffers are full, for good

        async def feed() -> None:
            source.push(b"data: 0\n\n")
            await asyncio.sleep(0.01)
            source.push(b"data: 1\n\n")
            await asyncio.sleep(0.05)
            source.push(b"data: 2\n\n")

        feeder = asyncio.ensure_future(feed())
        await _stream_with_deadline(client, deaf_send, source, timeouts)
        await feeder
        return client, source, await cancellations_left()

    client, source, cancelling = asyncio.run(within(main(), 5))
    assert source.delivered == [b"data: 1\n\n"]
    assert [b for b in client.bodies() if b != KEEPALIVE] == [b"data: 0\n\n", b"data: 1\n\n"]
    assert source.closed == (False, False)
    assert cancelling == 0
    assert len(timeouts) == 1


def test_delivered_pieces_the_client_takes_slowly_are_all_sent_in_order() -> None:
    """Each piece taken after 0.1 s (longer in all than the 0.3 s deadline, each shorter),
    one arriving every 0.07 or 0.15 s: a delivered send that has to wait is the task's to
    finish; pieces that arrive meanwhile are the step's, after it. Whole, in order, not
    counted as a send timeout."""
    timeouts: list[None] = []

    async def main() -> tuple[Client, DeliveringSource]:
        client = Client()
        source = DeliveringSource()

        async def slow_send(message: dict[str, Any]) -> None:
            await client.send(message)
            if message.get("body") and message["body"] != KEEPALIVE:
                await asyncio.sleep(0.1)

        async def feed() -> None:
            for i in range(6):
                source.push(f"data: {i}\n\n".encode())
                await asyncio.sleep(0.07 if i % 2 else 0.15)
            source.push(b"")

        feeder = asyncio.ensure_future(feed())
        await _stream_with_deadline(client, slow_send, source, timeouts)
        await feeder
        return client, source

    client, source = asyncio.run(within(main(), 10))
    assert [b for b in client.bodies() if b != KEEPALIVE] == [
        *(f"data: {i}\n\n".encode() for i in range(6)),
        b"",
    ]
    assert source.delivered, "no piece was sent from its arrival"
    assert source.closed == (True, False)
    assert timeouts == []


def test_a_client_gone_while_a_delivered_piece_is_pending_closes_the_source_not_whole() -> None:
    async def main() -> tuple[DeliveringSource, int]:
        client = FutureClient()
        source = DeliveringSource()
        never = asyncio.get_running_loop().create_future()

        async def deaf_send(message: dict[str, Any]) -> None:
            await client.send(message)
            if message.get("body", b"").startswith(b"data: 1"):
                await never

        async def feed() -> None:
            source.push(b"data: 0\n\n")
            await client.got_body.wait()
            await asyncio.sleep(0.01)
            source.push(b"data: 1\n\n")
            await asyncio.sleep(0.01)
            client.left.set()

        feeder = asyncio.ensure_future(feed())
        await send_event_stream(client.receive_future, deaf_send, {}, source, 30)
        await feeder
        return source, await cancellations_left()

    source, cancelling = asyncio.run(within(main(), 5))
    assert source.delivered == [b"data: 1\n\n"]
    assert source.closed == (False, False)
    assert cancelling == 0


def test_a_piece_that_arrives_during_a_keepalive_s_send_waits_for_it_in_the_step() -> None:
    """`deliver` declines while a keepalive's send is pending: the piece goes through the
    step, after the keepalive, never beside it."""

    async def main() -> tuple[Client, DeliveringSource]:
        client = Client()
        source = DeliveringSource()
        pushed = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            await client.send(message)
            if message.get("body") == KEEPALIVE and not pushed.is_set():
                pushed.set()
                source.push(b"data: 1\n\n")  # arrives while this keepalive is being sent
                await asyncio.sleep(0.02)

        source.push(b"data: 0\n\n")

        async def end() -> None:
            await pushed.wait()
            await asyncio.sleep(0.1)
            source.push(b"")

        ender = asyncio.ensure_future(end())
        await send_event_stream(client.receive, send, {}, source, 0.05, KEEPALIVE)
        await ender
        return client, source

    client, source = asyncio.run(within(main(), 5))
    bodies = client.bodies()
    assert bodies[:3] == [b"data: 0\n\n", KEEPALIVE, b"data: 1\n\n"]
    assert source.delivered == []


def test_a_refused_delivered_send_dropped_as_the_client_leaves_is_not_logged() -> None:
    """The client's disconnect is seen (the watcher cancels the stream's task) before the task
    awaits the failure of a send `deliver` began (the server refused it: the client is gone):
    the stream ends as the client's (source closed not whole, no exception out of it), and the
    failure dropped with it is not logged as a future's exception never retrieved."""
    unretrieved: list[dict[str, Any]] = []

    async def main() -> tuple[DeliveringSource, int]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: unretrieved.append(context))
        client = Client()
        source = DeliveringSource()
        receives: list[asyncio.Future[dict[str, Any]]] = []

        def receive() -> asyncio.Future[dict[str, Any]]:
            receives.append(loop.create_future())
            return receives[-1]

        async def refusing_send(message: dict[str, Any]) -> None:
            if message.get("body", b"").startswith(b"data: 1"):
                raise OSError("the client is gone")
            await client.send(message)

        async def feed() -> None:
            source.push(b"data: 0\n\n")
            await client.got_body.wait()
            await asyncio.sleep(0.01)  # the stream waits, its watcher armed
            # in one turn of the loop: the client's disconnect, then a read's piece
            receives[-1].set_result({"type": "http.disconnect"})
            source.push(b"data: 1\n\n")

        feeder = asyncio.ensure_future(feed())
        await send_event_stream(receive, refusing_send, {}, source, 30)
        await feeder
        task = asyncio.current_task()
        assert task is not None
        return source, task.cancelling()

    source, cancelling = asyncio.run(within(main(), 5))
    gc.collect()
    assert source.delivered == [b"data: 1\n\n"]
    assert source.closed == (False, False)
    assert cancelling == 0
    assert unretrieved == []
