"""How much of the Redis store's loss is its round trip alone (issue 19zi).

    flock /tmp/klawd-bench.lock taskset -c 1 .venv/bin/python -m loadtests.bench.round_trip_share \
        [--measures rps,event,lines] [--seconds 3] [--reps 4] [side_by_side's other options]

`side_by_side` with the embedded store, the Redis store and, as `gateway-before`, this checkout
on the embedded store with a round trip added: each admission, decided in process, is followed
by an awaited `PING` to the bench's redis-server (the hot-path client, so under load it leaves
with the loop turn's other commands, as the Redis store's admissions do). That gateway waits
for Redis as the Redis store's does, without Redis's work (the admission's Lua, its reply, the
settle batches). If it loses what the Redis store loses, the loss is the wait, not the work.

The added round trip lives only in a temporary directory (a `sitecustomize` beside a link to
this checkout's `gateway`, on that gateway's PYTHONPATH alone): nothing in the gateway changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.bench.contenders import REPO

# Imported by `site` in every process of the gateway run from the temporary directory (its
# supervisor and its worker): the embedded limiter's admission, then a PING, awaited.
SITECUSTOMIZE = """
import pathlib
import re

import gateway.limits as _limits
from gateway.store.resp import RespClient

_admit = _limits.EmbeddedLimiter.admit
_clients = []


async def _admit_then_ping(self, *args, **kwargs):
    admission = await _admit(self, *args, **kwargs)
    if not _clients:  # the bench's redis-server, from the Redis gateway's config (the cwd's)
        text = pathlib.Path("gateway-redis.toml").read_text()
        url = re.search(r'url = "(redis://[^"/]+)/', text).group(1)
        _clients.append(RespClient.from_url(url + "/2"))
    await _clients[0].execute("PING")
    return admission


_limits.EmbeddedLimiter.admit = _admit_then_ping
"""


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="klawd-round-trip-") as tmp:
        (Path(tmp) / "gateway").symlink_to(REPO / "gateway")
        (Path(tmp) / "sitecustomize.py").write_text(SITECUSTOMIZE)
        command = [
            sys.executable, "-m", "loadtests.bench.side_by_side",
            "--contenders", "gateway-sqlite,gateway-redis",
            "--before", tmp, "--before-store", "sqlite", *sys.argv[1:],
        ]  # fmt: skip
        return subprocess.run(command, cwd=REPO, env=os.environ, timeout=3600).returncode


if __name__ == "__main__":
    raise SystemExit(main())
