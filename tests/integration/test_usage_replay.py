"""`klawd usage replay`: the `unsettled usage entry` lines a gateway logs when its store stays
down through its shutdown (gateway/usage.py) are settled from the log, once however often the
log is replayed; on Redis the entries' holds go with them; a line that cannot be read is named
and the others are still settled."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.limits import LimitSpec
from gateway.store.base import Store, StoreError, UsageEntry, open_store
from gateway.store.redis import RedisStore
from gateway.store.redis_limiter import RedisLimiter, _acct
from gateway.usage import UsageRecorder
from tests.conftest import KLAWD
from tests.redis_server import RedisServer
from tests.usage_entries import usage_entry

DAY = time.strftime("%Y-%m-%d", time.gmtime())
# The format `klawd serve`'s workers log with (gateway/app.py app_from_environment).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class DownStore:
    """A store that is unreachable: every settlement fails."""

    async def settle(self, entries: list[UsageEntry], resent: bool = False) -> Any:
        raise StoreError("redis store failed: ConnectionError")


def entry(account_id: str, n: int, cost: int, reserved: int = 0, hold_id: str = "") -> UsageEntry:
    return usage_entry(
        id=f"use_replay_{n}",
        day=DAY,
        account_id=account_id,
        cost_micros=cost,
        reserved_micros=reserved,
        request_id=f"req_{n}",
        hold_id=hold_id,
    )


def shutdown_log(path: Path, entries: list[UsageEntry]) -> None:
    """What a gateway's log gets when its store is down at shutdown: the real recorder's lines,
    among others."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    usage_log = logging.getLogger("klawd.usage")
    usage_log.addHandler(handler)
    try:
        recorder = UsageRecorder(DownStore())  # type: ignore[arg-type]
        for one in entries:
            recorder.record(one)
        usage_log.error("something else went wrong")  # not an entry
        asyncio.run(recorder.close())
    finally:
        usage_log.removeHandler(handler)
        handler.close()


def klawd(
    config: Path, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [KLAWD, *args, "--config", str(config)],
        capture_output=True,
        input=stdin,
        cwd=config.parent,
        check=False,
        timeout=60,
    )


def ok(config: Path, *args: str) -> Any:
    done = klawd(config, *args)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)


def test_replayed_twice_the_logged_entries_are_settled_once(tmp_path: Path) -> None:
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/replay.db"\n')
    account = ok(config, "accounts", "create", "--name", "replay", "--credits-usd", "10")["id"]
    log = tmp_path / "gateway.log"
    shutdown_log(log, [entry(account, 1, 250_000), entry(account, 2, 50_000)])
    assert log.read_text().count("unsettled usage entry {") == 2
    assert ok(config, "accounts", "show", account)["credits_usd"] == 10.0  # nothing settled
    assert ok(config, "usage", "replay", str(log)) == {"entries": 2, "unreadable_lines": []}
    assert ok(config, "accounts", "show", account)["credits_usd"] == 9.7
    # Again, from standard input this time: nothing is charged twice.
    again = klawd(config, "usage", "replay", "-", stdin=log.read_bytes())
    assert again.returncode == 0, again.stderr
    assert ok(config, "accounts", "show", account)["credits_usd"] == 9.7
    missing = klawd(config, "usage", "replay", str(tmp_path / "nowhere.log"))
    assert missing.returncode == 2
    assert (
        missing.stderr
        == f"klawd: cannot read {tmp_path}/nowhere.log: No such file or directory\n".encode()
    )


def test_an_unreadable_line_is_named_and_the_others_are_settled(tmp_path: Path) -> None:
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/replay.db"\n')
    account = ok(config, "accounts", "create", "--name", "cut", "--credits-usd", "1")["id"]
    log = tmp_path / "gateway.log"
    shutdown_log(log, [entry(account, 1, 100_000)])
    with log.open("a") as more:
        more.write('2026-12-04 ERROR klawd.usage unsettled usage entry {"id":"use_cut","ts":\n')
    done = klawd(config, "usage", "replay", str(log))
    assert done.returncode == 1
    lines = log.read_text().splitlines()
    assert orjson.loads(done.stdout) == {"entries": 1, "unreadable_lines": [f"{log}:{len(lines)}"]}
    assert b"1 marked line(s) could not be read" in done.stderr
    assert ok(config, "accounts", "show", account)["credits_usd"] == 0.9


def test_lines_wrapped_by_a_log_shipper_are_read(tmp_path: Path) -> None:
    """Docker's json-file driver (`{"log": "<line>\\n", ...}`) and a shipper that nests the line
    (Fluent Bit / Loki exports) escape the entry's quotes: the entry inside is still settled."""
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "sqlite:///{tmp_path}/replay.db"\n')
    account = ok(config, "accounts", "create", "--name", "shipped", "--credits-usd", "1")["id"]
    raw = tmp_path / "gateway.log"
    shutdown_log(raw, [entry(account, 1, 100_000), entry(account, 2, 20_000)])
    first, second = (line for line in raw.read_text().splitlines() if "unsettled" in line)
    shipped = tmp_path / "shipped.log"
    shipped.write_bytes(
        orjson.dumps({"log": first + "\n", "stream": "stderr", "time": "2026-12-05T01:00:00Z"})
        + b"\n"
        + orjson.dumps({"kubernetes": {"pod": "gw-0"}, "data": [{"message": second}]})
        + b"\n"
        + orjson.dumps({"log": "2026-12-05 INFO klawd.app started\n"})
        + b"\n"
    )
    assert '\\"id\\"' in shipped.read_text()  # the quotes really are escaped
    assert ok(config, "usage", "replay", str(shipped)) == {"entries": 2, "unreadable_lines": []}
    assert ok(config, "accounts", "show", account)["credits_usd"] == 0.88
    # A wrapped line whose entry was cut is named, as a raw one is.
    cut = tmp_path / "cut.log"
    cut.write_bytes(orjson.dumps({"log": first[: first.index('"ts"')]}) + b"\n")
    done = klawd(config, "usage", "replay", str(cut))
    assert done.returncode == 1
    assert orjson.loads(done.stdout) == {"entries": 0, "unreadable_lines": [f"{cut}:1"]}


def test_on_redis_a_replayed_entry_takes_its_hold_with_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    redis_server.flush()
    config = tmp_path / "klawd.toml"
    config.write_text(f'[store]\nurl = "{redis_server.url}"\n')

    async def admitted() -> tuple[str, str, int]:
        store = open_store(redis_server.url)
        assert isinstance(store, RedisStore)
        try:
            account = await store.create_account("held", "free", 1_000_000)
            admission = await RedisLimiter(store).admit(account.id, LimitSpec(100, 1000), 300_000)
            return account.id, admission.hold_id, admission.reserved_micros
        finally:
            await store.close()

    account, hold, reserved = asyncio.run(admitted())
    assert hold and reserved == 300_000
    log = tmp_path / "gateway.log"
    shutdown_log(log, [entry(account, 1, 40_000, reserved, hold)])
    assert ok(config, "accounts", "show", account)["credits_usd"] == 0.7  # still reserved
    assert ok(config, "usage", "replay", str(log))["entries"] == 1
    assert ok(config, "accounts", "show", account)["credits_usd"] == 0.96
    assert ok(config, "usage", "replay", str(log))["entries"] == 1  # read again, not charged
    assert ok(config, "accounts", "show", account)["credits_usd"] == 0.96

    async def holds_left() -> int:
        store: Store = open_store(redis_server.url)
        try:
            assert isinstance(store, RedisStore)
            count: int = await store._call("ZCARD", f"{_acct(account)}:holds")
            return count
        finally:
            await store.close()

    assert asyncio.run(holds_left()) == 0
