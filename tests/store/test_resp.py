"""The hot path's lean Redis client (gateway/store/resp.py) against the suite's real redis-server,
and against raw asyncio servers that misbehave. Every test runs on asyncio's loop and on uvloop
(the gateway's)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import uvloop

from gateway.limits import LimitSpec
from gateway.store.base import StoreError, UsageEntry, open_store
from gateway.store.redis import RedisStore
from gateway.store.redis_limiter import RedisLimiter
from gateway.store.resp import (
    QUIET_S,
    RespClient,
    RespConnectionError,
    RespNotSent,
    RespReplyError,
    RespTimeoutError,
)
from tests.conftest import free_port
from tests.kept_context import context_kept_after
from tests.live_bound import running_timeout, within
from tests.redis_server import RedisClusterServers, RedisServer

Runner = Callable[[Coroutine[Any, Any, None]], None]
# Long enough to make the client quiet on every loop (uvloop's timers count whole milliseconds:
# a shorter sleep may end within QUIET_S).
QUIET_WAIT_S = 0.001 + 2 * QUIET_S
BOUND_S = 10  # every wait on a misbehaving server is bounded by this (never a timing assertion)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.run(within(coro, 60))

    return runner


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    yield client
    client.close()


@contextlib.asynccontextmanager
async def client_for(url: str, **kwargs: Any) -> AsyncIterator[RespClient]:
    client = RespClient.from_url(url, **kwargs)
    try:
        yield client
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]],
) -> AsyncIterator[str]:
    """A raw TCP server on loopback; yields its redis:// URL."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in writers:
            writer.close()
        await server.wait_closed()


async def wait_for_pending(client: RespClient, count: int) -> None:
    """Until the client's connections owe `count` replies in all (every command was written)."""
    async with running_timeout(BOUND_S):
        while sum(len(c.pending) for c in client._connections) < count:
            await asyncio.sleep(0.005)


# -- replies ------------------------------------------------------------------------------------
def test_reply_types(run: Runner, redis_server: RedisServer) -> None:
    async def body() -> None:
        async with client_for(redis_server.url) as client:
            await client.execute("DEL", "resp:list", "resp:str", "resp:n")
            assert await client.execute("SET", "resp:str", "héllo") == b"OK"
            assert await client.execute("GET", "resp:str") == "héllo".encode()
            assert await client.execute("GET", "resp:missing") is None
            assert await client.execute("INCRBY", "resp:n", 41) == 41
            assert await client.execute("INCRBYFLOAT", "resp:n", 0.5) == b"41.5"
            assert await client.execute("RPUSH", "resp:list", b"a", 2, 3.25) == 3
            assert await client.execute("LRANGE", "resp:list", 0, -1) == [b"a", b"2", b"3.25"]
            assert await client.execute("LRANGE", "resp:missing", 0, -1) == []
            nested = await client.execute(
                "EVAL", "return {1, {'x', {2, false}}, redis.status_reply('FINE')}", 0
            )
            assert nested == [1, [b"x", [2, None]], b"FINE"]
            with pytest.raises(RespReplyError) as caught:
                await client.execute("INCR", "resp:str")
            assert str(caught.value) == "ERR value is not an integer or out of range"
            with pytest.raises(RespReplyError, match="unknown command"):
                await client.execute("NOSUCHCOMMAND")
            # the connection is still in step after error replies
            assert await client.execute("ECHO", "still here") == b"still here"
            await client.execute("DEL", "resp:list", "resp:str", "resp:n")

    run(body())


def test_arguments_are_packed_as_redis_py_packs_them(
    run: Runner, redis_server: RedisServer
) -> None:
    async def body() -> None:
        async with client_for(redis_server.url) as client:
            for value in ("text", "ünï", b"\x00\r\nbinary", 0, -7, 10**20, 1.5, 1e20, b""):
                await client.execute("SET", "resp:arg", value)
                expected = value if isinstance(value, bytes) else str(value).encode()
                if isinstance(value, float):
                    expected = repr(value).encode()
                assert await client.execute("GET", "resp:arg") == expected
            with pytest.raises(TypeError):
                await client.execute("SET", "resp:arg", None)
            with pytest.raises(TypeError):
                await client.execute("SET", "resp:arg", True)
            await client.execute("DEL", "resp:arg")

    run(body())


def test_thousands_in_flight_on_one_connection_each_get_their_own_answer(
    run: Runner, redis_server: RedisServer
) -> None:
    async def body() -> None:
        async with client_for(redis_server.url, connections=1) as client:
            keys = [f"resp:many:{i}" for i in range(2000)]
            await client.execute("DEL", *keys)
            added = await asyncio.gather(
                *[client.execute("INCRBY", key, i) for i, key in enumerate(keys)]
            )
            assert added == list(range(2000))
            read = await asyncio.gather(*[client.execute("GET", key) for key in keys])
            assert read == [str(i).encode() for i in range(2000)]
            mixed = await asyncio.gather(
                *[
                    client.execute("ECHO", f"e{i}") if i % 2 else client.execute("GET", keys[i])
                    for i in range(2000)
                ]
            )
            assert mixed == [f"e{i}".encode() if i % 2 else str(i).encode() for i in range(2000)]
            assert len(client._connections) == 1
            await client.execute("DEL", *keys)

    run(body())


def test_a_connection_keeps_nothing_of_the_request_that_opened_it(
    run: Runner, redis_server: RedisServer
) -> None:
    # A request's call may be the one that (re)connects, and arms the connection's timer: neither
    # may keep that request's context variables (tests/kept_context.py).
    async def body() -> None:
        async with client_for(redis_server.url, connections=1) as client:

            async def opening_request() -> None:
                assert await client.execute("ECHO", "one") == b"one"

            assert not await context_kept_after(opening_request), "the connection keeps it"
            assert await client.execute("ECHO", "two") == b"two"
            assert len(client._connections) == 1

    run(body())


def test_commands_spread_over_the_connections(run: Runner, redis_server: RedisServer) -> None:
    async def body() -> None:
        async with client_for(redis_server.url, connections=3) as client:
            for _ in range(5):
                answers = await asyncio.gather(*[client.execute("ECHO", i) for i in range(300)])
                assert answers == [str(i).encode() for i in range(300)]
            assert 1 <= len(client._connections) <= 3

    run(body())


def test_commands_of_one_loop_turn_leave_in_one_write(
    run: Runner, redis_server: RedisServer, sync_redis: redis.Redis
) -> None:
    """Concurrent callers' commands are pipelined: 300 commands issued in the same turn of the
    event loop reach Redis in one read (one write here), on one of the two connections."""

    def reads() -> int:
        return int(sync_redis.info("stats")["total_reads_processed"])

    async def body() -> None:
        async with client_for(redis_server.url, connections=2) as client:
            await client.execute("PING")
            owed = asyncio.gather(*[client.execute("PING") for _ in range(10)])
            await asyncio.sleep(0)  # written: replies owed, so the next turn opens another
            await asyncio.gather(owed, client.execute("PING"))
            await client.execute("PING")
            assert len(client._connections) == 2
            before = reads()
            answers = await asyncio.gather(*[client.execute("ECHO", i) for i in range(300)])
            after = reads()
            assert answers == [str(i).encode() for i in range(300)]
            # the batch and the INFO that read the counter (one command a write would be 301;
            # one more read allowed for anything else this session's Redis may be serving)
            assert after - before <= 3

    run(body())


def test_execute_many_returns_error_replies_in_place(
    run: Runner, redis_server: RedisServer
) -> None:
    async def body() -> None:
        async with client_for(redis_server.url) as client:
            replies = await client.execute_many(
                [
                    ("SET", "resp:batch", "v"),
                    ("INCR", "resp:batch"),  # an error in the middle
                    ("GET", "resp:batch"),
                    ("DEL", "resp:batch"),
                ]
            )
            assert replies[0] == b"OK"
            assert isinstance(replies[1], RespReplyError)
            assert "not an integer" in str(replies[1])
            assert replies[2:] == [b"v", 1]
            assert await client.execute_many([]) == []
            assert await client.execute("PING") == b"PONG"

    run(body())


# -- URLs, AUTH and SELECT ----------------------------------------------------------------------
def test_url_forms() -> None:
    client = RespClient.from_url("redis://localhost")
    assert (client.host, client.port, client.db, client._ssl) == ("localhost", 6379, 0, None)
    client = RespClient.from_url("redis://u%40x:p%3Aw@10.0.0.1:7000/5")
    assert (client.host, client.port, client.db) == ("10.0.0.1", 7000, 5)
    assert (client._username, client._password) == ("u@x", "p:w")
    client = RespClient.from_url("redis://:secret@h/2?db=3&socket_timeout=0.5")
    assert (client._username, client._password, client.db) == (None, "secret", 3)
    assert client._command_timeout == 0.5
    client = RespClient.from_url("redis://h?socket_connect_timeout=3&health_check_interval=15")
    assert client._connect_timeout == 3.0
    client = RespClient.from_url("rediss://cache.example:6380")
    assert isinstance(client._ssl, ssl.SSLContext)
    assert client._ssl.verify_mode == ssl.CERT_REQUIRED and client._ssl.check_hostname
    for unsupported in (
        "unix:///tmp/redis.sock",
        "redis+cluster://h:7000",
        "http://h",
        "redis://h/notanumber",
        "redis://h?ssl_cert_reqs=none",
        "redis://h?protocol=3",
        "redis://h?db=x",
        "redis://h?socket_timeout=0",
        "redis://h:99999",
    ):
        with pytest.raises(ValueError):
            RespClient.from_url(unsupported)


def test_auth_and_select(run: Runner, redis_server: RedisServer, sync_redis: redis.Redis) -> None:
    user, password, db = "resp-test-user", "s3cret/pass", 7
    sync_redis.execute_command(
        "ACL", "SETUSER", user, "reset", "on", f">{password}", "~resp:*", "+@all"
    )
    on_db = redis.Redis(port=redis_server.port, db=db)
    try:

        async def body() -> None:
            url = f"redis://{user}:{password.replace('/', '%2F')}@127.0.0.1:{redis_server.port}"
            async with client_for(f"{url}/{db}") as client:
                assert await client.execute("ACL", "WHOAMI") == user.encode()
                await client.execute("SET", "resp:where", "db7")
                with pytest.raises(RespReplyError, match="NOPERM"):
                    await client.execute("SET", "elsewhere", "x")  # the ACL applies
            assert on_db.get("resp:where") == b"db7"
            assert sync_redis.get("resp:where") is None  # not db 0
            async with client_for(f"redis://{user}:wrong@127.0.0.1:{redis_server.port}") as bad:
                with pytest.raises(RespConnectionError, match="refused"):
                    await bad.execute("PING")
                assert bad._connections == []

        run(body())
    finally:
        on_db.flushdb()
        on_db.close()
        sync_redis.execute_command("ACL", "DELUSER", user)


# -- failures -----------------------------------------------------------------------------------
def test_connection_refused(run: Runner) -> None:
    async def body() -> None:
        async with client_for(f"redis://127.0.0.1:{free_port()}") as client:
            for _ in range(2):
                with pytest.raises(RespConnectionError):
                    await within(client.execute("PING"), BOUND_S)
            results = await asyncio.gather(
                *[client.execute("PING") for _ in range(20)], return_exceptions=True
            )
            assert all(isinstance(r, RespConnectionError) for r in results)

    run(body())


def test_a_server_that_never_answers_times_out(run: Runner) -> None:
    received = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        while data := await reader.read(65536):
            received += len(data)

    async def body() -> None:
        async with raw_server(silent) as url, client_for(url, command_timeout_s=0.2) as client:
            results = await within(
                asyncio.gather(*[client.execute("PING") for _ in range(5)], return_exceptions=True),
                BOUND_S,
            )
            assert all(isinstance(r, RespTimeoutError) for r in results), results
            assert client._connections == []  # dropped
            with pytest.raises(RespTimeoutError):
                await within(client.execute_many([("PING",), ("PING",)]), BOUND_S)
            assert received > 0

    run(body())


def test_a_handshake_that_never_answers_fails_the_connect(run: Runner) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass

    async def body() -> None:
        async with (
            raw_server(silent) as url,
            client_for(f"{url}/3", connect_timeout_s=0.2) as client,
        ):
            with pytest.raises(RespNotSent) as raised:  # never written: it did not run
                await within(client.execute("PING"), BOUND_S)
            assert isinstance(raised.value.__cause__, RespTimeoutError)

    run(body())


def test_a_command_no_connection_could_be_opened_for_was_not_sent(run: Runner) -> None:
    """Nothing listens: the connect is refused, and the command says it was never written
    (a caller may send it again without running it twice: gateway/token_charges.py)."""

    async def body() -> None:
        async with client_for(f"redis://127.0.0.1:{free_port()}") as client:
            with pytest.raises(RespNotSent, match="could not connect"):
                await within(client.execute("PING"), BOUND_S)

    run(body())


def test_server_closing_mid_flight_fails_the_pending_and_the_next_call_reconnects(
    run: Runner, redis_server: RedisServer, sync_redis: redis.Redis
) -> None:
    async def body() -> None:
        async with client_for(redis_server.url, connections=1, command_timeout_s=30) as client:
            await client.execute("CLIENT", "SETNAME", "resp-kill-me")
            await client.execute("DEL", "resp:never")
            blocked = asyncio.ensure_future(client.execute("BLPOP", "resp:never", 0))
            behind = [asyncio.ensure_future(client.execute("ECHO", i)) for i in range(10)]
            await wait_for_pending(client, 11)
            ids = [c["id"] for c in sync_redis.client_list() if c.get("name") == "resp-kill-me"]
            assert len(ids) == 1
            sync_redis.execute_command("CLIENT", "KILL", "ID", ids[0])
            results = await within(
                asyncio.gather(blocked, *behind, return_exceptions=True), BOUND_S
            )
            assert all(isinstance(r, RespConnectionError) for r in results), results
            assert await client.execute("PING") == b"PONG"  # a new connection
            assert await client.execute("CLIENT", "GETNAME") is None

    run(body())


def test_reconnects_are_shared_by_concurrent_callers(
    run: Runner, redis_server: RedisServer, sync_redis: redis.Redis
) -> None:
    def connections_received() -> int:
        return int(sync_redis.info("stats")["total_connections_received"])

    async def body() -> None:
        async with client_for(redis_server.url, connections=1) as client:
            before = connections_received()
            answers = await asyncio.gather(*[client.execute("ECHO", i) for i in range(100)])
            assert answers == [str(i).encode() for i in range(100)]
            assert connections_received() - before == 1

    run(body())


def test_a_cancelled_caller_leaves_the_others_in_step(
    run: Runner, redis_server: RedisServer, sync_redis: redis.Redis
) -> None:
    async def body() -> None:
        async with client_for(redis_server.url, connections=1, command_timeout_s=30) as client:
            await client.execute("DEL", "resp:unblock", "resp:counter")
            # the BLPOP holds every later command of the connection behind it on the server
            first = asyncio.ensure_future(client.execute("BLPOP", "resp:unblock", 0))
            second = asyncio.ensure_future(client.execute("ECHO", "second"))
            cancelled = asyncio.ensure_future(client.execute("INCR", "resp:counter"))
            batch = asyncio.ensure_future(
                client.execute_many([("ECHO", "b1"), ("ECHO", "b2"), ("ECHO", "b3")])
            )
            last = asyncio.ensure_future(client.execute("ECHO", "last"))
            await wait_for_pending(client, 7)
            cancelled.cancel()
            batch.cancel()
            sync_redis.rpush("resp:unblock", "go")
            assert await first == [b"resp:unblock", b"go"]
            assert await second == b"second"
            assert await last == b"last"
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            with pytest.raises(asyncio.CancelledError):
                await batch
            assert await client.execute("ECHO", "after") == b"after"
            assert await client.execute("GET", "resp:counter") == b"1"  # it did run
            assert len(client._connections) == 1
            await client.execute("DEL", "resp:counter")

    run(body())


def test_close_fails_what_is_owed_and_refuses_more(
    run: Runner, redis_server: RedisServer, sync_redis: redis.Redis
) -> None:
    async def body() -> None:
        client = RespClient.from_url(redis_server.url, command_timeout_s=30)
        await client.execute("DEL", "resp:close")
        blocked = asyncio.ensure_future(client.execute("BLPOP", "resp:close", 0))
        await wait_for_pending(client, 1)
        await client.close()
        with pytest.raises(RespConnectionError):
            await blocked
        with pytest.raises(RespConnectionError):
            await client.execute("PING")
        await client.close()  # twice is fine

    run(body())


# -- through the store --------------------------------------------------------------------------
def usage_entry(account_id: str, n: int) -> UsageEntry:
    return UsageEntry(
        id=f"use_resp_{account_id}_{n}",
        ts=1_795_000_000.0 + n,
        day="2026-11-26",
        account_id=account_id,
        key_id="key_1",
        model="m/x",
        provider="m",
        prompt_tokens=10,
        completion_tokens=5,
        images=0,
        cost_micros=100,
        reserved_micros=300,
        latency_ms=1,
        status=200,
        request_id=f"req_{n}",
        stream=False,
    )


def test_the_store_uses_the_lean_client_only_off_cluster(
    redis_server: RedisServer, redis_cluster: RedisClusterServers
) -> None:
    single = RedisStore(redis_server.url)
    cluster = RedisStore(redis_cluster.url)
    unsupported = RedisStore(f"{redis_server.url}?ssl_cert_reqs=none")
    try:
        assert single._resp is not None
        assert cluster._resp is None
        assert unsupported._resp is None  # stays on redis-py entirely
    finally:
        for store in (single, cluster, unsupported):
            asyncio.run(store.close())


def test_store_reloads_a_forgotten_library_on_the_lean_path(
    run: Runner, redis_server: RedisServer, sync_redis: redis.Redis
) -> None:
    async def body() -> None:
        store = open_store(redis_server.url)
        assert isinstance(store, RedisStore) and store._resp is not None
        try:
            account = await store.create_account("resp", "free", 1_000)
            assert await store.reserve_credits(account.id, 300)
            sync_redis.function_flush()  # a restarted Redis without persistence
            assert await store.reserve_credits(account.id, 300)  # reloaded, retried once
            sync_redis.function_flush()
            with pytest.raises(StoreError, match=r"settle failed for 1 of 1 calls \(2 entries\)"):
                await store.settle([usage_entry(account.id, 1), usage_entry(account.id, 2)])
            await store.settle([usage_entry(account.id, 1), usage_entry(account.id, 2)])
            await store.settle([usage_entry(account.id, 1)])  # idempotent
            settled = await store.get_account(account.id)
            assert settled is not None
            assert settled.credits_micros == 1_000 - 600 + 2 * (300 - 100)
        finally:
            await store.close()

    redis_server.flush()
    run(body())


def test_store_fails_closed_while_redis_is_down_and_recovers(run: Runner, tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path)
    server.start()

    async def body() -> None:
        store = open_store(server.url)
        assert isinstance(store, RedisStore)
        try:
            account = await store.create_account("resp", "free", 1_000)
            assert await store.reserve_credits(account.id, 1)
            saver = redis.Redis(port=server.port)
            saver.save()
            saver.close()
            server.stop()
            with pytest.raises(StoreError, match="redis store failed"):
                await within(store.reserve_credits(account.id, 1), BOUND_S)
            with pytest.raises(StoreError, match="redis store failed"):
                await within(store.settle([usage_entry(account.id, 1)]), BOUND_S)
            server.start()  # the dump brings the account and the functions back
            assert await store.reserve_credits(account.id, 1)
            await store.settle([usage_entry(account.id, 1)])
        finally:
            await store.close()

    try:
        run(body())
    finally:
        server.stop()


def test_send_writes_at_once_on_an_idle_connection_only(
    run: Runner, redis_server: RedisServer
) -> None:
    async def body() -> None:
        async with client_for(redis_server.url) as client:
            assert client.send("PING") is None  # no connection yet: use execute
            await client.execute("PING")
            await asyncio.sleep(QUIET_WAIT_S)  # quiet (commands coming: send() queues)
            sent = client.send("ECHO", "x")  # written at once: quiet, the connection idle
            assert sent is not None and sent[1] and not sent[0].done()
            queued = client.send("ECHO", "y")  # busy: queued with the loop turn's commands
            assert queued is not None and not queued[1]
            connection = client._connections[0]
            assert connection.corked  # not written yet: it leaves at the turn's end
            assert await sent[0] == b"x"
            assert await queued[0] == b"y"
            await asyncio.sleep(QUIET_WAIT_S)
            refused = client.send("NO-SUCH-COMMAND")
            assert refused is not None and refused[1]
            assert isinstance(await refused[0], RespReplyError)  # a value, not raised

    run(body())


def test_send_writes_at_once_one_command_at_a_time_on_every_loop(
    run: Runner, redis_server: RedisServer
) -> None:
    """One request at a time sends its command a little over `QUIET_S` after the previous one:
    written at once on uvloop too, whose `loop.time()` counts whole milliseconds (read with it,
    the rule said "quiet" only when the millisecond had changed: about 4 times in 10)."""

    async def body() -> None:
        async with client_for(redis_server.url) as client:
            await client.execute("PING")
            await asyncio.sleep(QUIET_WAIT_S)
            for number in range(20):
                sent = client.send("ECHO", str(number))
                last = time.perf_counter()
                assert sent is not None and sent[1], number
                assert await sent[0] == str(number).encode()
                while time.perf_counter() - last < 1.5 * QUIET_S:  # nothing sent meanwhile
                    pass

    run(body())


def test_a_sent_admission_reloads_a_forgotten_library_and_reserves_once(
    run: Runner, redis_server: RedisServer, sync_redis: redis.Redis
) -> None:
    async def body() -> None:
        store = open_store(redis_server.url)
        assert isinstance(store, RedisStore)
        try:
            account = await store.create_account("sent", "free", 1_000)
            limiter = store.limiter()
            assert isinstance(limiter, RedisLimiter)
            spec = LimitSpec(10, 100)
            assert (await limiter.admit(account.id, spec, 0)).admitted  # loads the library
            sync_redis.function_flush()  # a restarted Redis without persistence
            await asyncio.sleep(QUIET_WAIT_S)  # quiet (else send_admit queues: see resp.send)
            sent = limiter.send_admit(account.id, spec, 300)
            assert sent is not None and sent[1]  # written at once
            # the call did not run: the library loaded again, the call made once more
            assert limiter.admission_of(await sent[0], account.id, 300) is None
            admission = await limiter.admit(account.id, spec, 300)
            assert admission.admitted and admission.reserved_micros == 300
            settled = await store.get_account(account.id)
            assert settled is not None and settled.credits_micros == 700  # reserved once
        finally:
            await store.close()

    redis_server.flush()
    run(body())
