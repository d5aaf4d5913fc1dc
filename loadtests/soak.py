"""A bounded soak run: good traffic mixed with upstream faults against one gateway process.

    make soak                      # 120 s, 8 client threads
    .venv/bin/python loadtests/soak.py --seconds 300 --clients 8 [--store redis]

The gateway (embedded store, or a redis-server of its own) fronts the fake OpenAI upstream of
the test suite on loopback.
Every client thread loops, bounded by the deadline, over a fixed mix:

    good      openai/gpt-fake, non-streamed and streamed             must be 200 + [DONE]
    fallback  openai/fallback-chain (its upstream answers 500; falls back to gpt-fake): must be 200
    flaky     openai/flaky (two 503s then OK for each `user`): retried, must be 200
    faults    openai/cut-fake (stream cut mid-way), openai/fail-429, openai/garbage:
              must end in an error the client can see (error event, 429, 502; 503 once the
              model's circuit is open), never a hang

It reports requests per class and outcome, every unexpected answer, and the RSS of the gateway's
process tree sampled every 5 s (flat memory = no leak). Once the clients stop it checks the
books: the account's balance must be its credit less the ledger's costs (every reservation
given back, every request charged once), and on Redis no reservation hold may be left. Exit code
1 when a good request failed or the books do not balance.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import free_port, gateway_config, start_gateway, stop
from tests.fakes.openai_upstream import FakeOpenAI
from tests.redis_server import RedisServer

CREDIT_MICROS = 1_000_000_000  # the soak account's $1000


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and its descendants, from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(
                line.split(":", 1) for line in status.read_text().splitlines() if ":" in line
            )
        except OSError:
            continue
        children[int(fields["PPid"].strip())].append(int(fields["Pid"].strip()))
    total_kb = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        pending.extend(children.get(current, []))
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def client_loop(
    base_url: str,
    key: str,
    deadline: float,
    tally: collections.Counter[str],
    problems: list[str],
    lock: threading.Lock,
) -> None:
    headers = {"authorization": f"Bearer {key}"}
    message = [{"role": "user", "content": "soak"}]
    url = f"{base_url}/v1/chat/completions"
    with httpx.Client(timeout=30) as client:
        turn = 0
        while time.monotonic() < deadline:
            turn += 1
            kind = ["good", "good-stream", "fallback", "flaky", "cut", "429", "garbage"][turn % 7]
            ok = False
            detail = ""
            try:
                if kind == "good":
                    r = client.post(
                        url, headers=headers, json={"model": "openai/gpt-fake", "messages": message}
                    )
                    ok, detail = r.status_code == 200, str(r.status_code)
                elif kind == "good-stream":
                    r = client.post(
                        url,
                        headers=headers,
                        json={"model": "openai/gpt-fake", "messages": message, "stream": True},
                    )
                    ok, detail = (
                        r.status_code == 200 and r.content.endswith(b"data: [DONE]\n\n"),
                        str(r.status_code),
                    )
                elif kind == "fallback":
                    r = client.post(
                        url,
                        headers=headers,
                        json={"model": "openai/fallback-chain", "messages": message},
                    )
                    ok, detail = (
                        r.status_code == 200
                        and r.headers.get("x-klawd-model") == "openai/gpt-fake",
                        str(r.status_code),
                    )
                elif kind == "flaky":
                    r = client.post(
                        url,
                        headers=headers,
                        json={
                            "model": "openai/flaky",
                            "messages": message,
                            "user": str(uuid.uuid4()),
                        },
                    )
                    ok, detail = r.status_code == 200, str(r.status_code)
                elif kind == "cut":
                    r = client.post(
                        url,
                        headers=headers,
                        json={"model": "openai/cut-fake", "messages": message, "stream": True},
                    )
                    # cut streams count against the circuit (decision 0005): once it is
                    # open the answer is 503 at once, as for the other faults
                    ok = r.status_code == 503 or (
                        r.status_code == 200
                        and b'"error"' in r.content
                        and b"[DONE]" not in r.content
                    )
                    detail = str(r.status_code)
                elif kind == "429":
                    r = client.post(
                        url, headers=headers, json={"model": "openai/fail-429", "messages": message}
                    )
                    ok, detail = r.status_code in (429, 503), str(r.status_code)
                else:
                    r = client.post(
                        url, headers=headers, json={"model": "openai/garbage", "messages": message}
                    )
                    ok, detail = r.status_code in (502, 503), str(r.status_code)
            except httpx.HTTPError as exc:
                detail = type(exc).__name__
            with lock:
                tally[f"{kind} {'ok' if ok else 'UNEXPECTED ' + detail}"] += 1
                if not ok and len(problems) < 50:
                    problems.append(f"{kind}: {detail}")


def books(admin: httpx.Client, account_id: str, redis: RedisServer | None) -> str | None:
    """None when the account's balance is its credit less the ledger's costs and (Redis) no
    reservation hold is left; else what differs. Waits (bounded) for the last settle batch."""
    deadline = time.monotonic() + 10
    while True:
        balance = round(admin.get(f"/admin/accounts/{account_id}").json()["credits_usd"] * 1e6)
        usage = admin.get(f"/admin/accounts/{account_id}/usage").json()["data"]
        spent = sum(round(row["cost_usd"] * 1e6) for row in usage)
        holds = 0
        if redis is not None:
            import redis as redis_py

            with redis_py.Redis(port=redis.port) as client:
                holds = int(client.zcard(f"klawd:acct:{{{account_id}}}:holds"))
        if balance == CREDIT_MICROS - spent and holds == 0:
            return None
        if time.monotonic() > deadline:
            return (
                f"balance {balance} micro-USD, credit {CREDIT_MICROS} less the ledger's "
                f"{spent} is {CREDIT_MICROS - spent}; {holds} reservation holds left"
            )
        time.sleep(0.2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    args = parser.parse_args()
    fake = FakeOpenAI()
    fake.start()
    directory = Path(tempfile.mkdtemp(prefix="klawd-soak-"))
    redis = None
    if args.store == "redis":
        redis = RedisServer(free_port(), directory / "redis")
        redis.start()
    port = free_port()
    gateway_config(
        directory / "klawd.toml", port, fake.base_url, store_url=redis.url if redis else None
    )
    gateway = start_gateway(directory / "klawd.toml", port)
    tally: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    lock = threading.Lock()
    unbalanced: str | None = "not checked"
    try:
        with gateway.admin() as admin:
            account = admin.post(
                "/admin/accounts",
                json={"name": "soak", "plan": "enterprise", "credits_usd": CREDIT_MICROS / 1e6},
            ).json()
            limits = {"requests_per_minute": 10**7, "requests_per_day": 10**9}
            admin.patch(f"/admin/accounts/{account['id']}", json={"limits": limits})
            key = admin.post(f"/admin/accounts/{account['id']}/keys", json={}).json()["key"]
        started = time.monotonic()
        deadline = started + args.seconds
        threads = [
            threading.Thread(
                target=client_loop, args=(gateway.base_url, key, deadline, tally, problems, lock)
            )
            for _ in range(args.clients)
        ]
        for thread in threads:
            thread.start()
        samples = []
        while any(t.is_alive() for t in threads):
            samples.append((time.monotonic() - started, tree_rss_mb(gateway.process.pid)))
            time.sleep(5)
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        with gateway.admin() as admin:
            unbalanced = books(admin, account["id"], redis)
    finally:
        stop(gateway.process)
        fake.stop()
        if redis is not None:
            redis.stop()
    total = sum(tally.values())
    print(
        f"soak: {total} requests in {elapsed:.0f} s ({total / elapsed:.0f}/s), "
        f"{args.clients} clients"
    )
    for line, count in sorted(tally.items()):
        print(f"  {line:40} {count}")
    print(
        "RSS of the gateway process tree (MB): "
        + ", ".join(f"{t:.0f}s={m:.1f}" for t, m in samples)
    )
    if len(samples) >= 3:
        settled = samples[len(samples) // 3][1]
        print(f"growth after warm-up: {samples[-1][1] - settled:+.1f} MB")
    good_failures = sum(
        c
        for line, c in tally.items()
        if line.startswith(("good", "fallback", "flaky")) and "UNEXPECTED" in line
    )
    if problems:
        print("unexpected answers (first 50):", *problems, sep="\n  ")
    print(f"books ({args.store}): {unbalanced or 'balanced'}")
    return 1 if good_failures or unbalanced else 0


if __name__ == "__main__":
    sys.exit(main())
