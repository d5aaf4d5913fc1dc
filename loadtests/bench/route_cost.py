"""What one request of the embeddings, images or Messages route costs the whole app, counted.

    .venv/bin/python -m loadtests.bench.route_cost [--routes embeddings,images,messages]
        [--before DIR] [--tree DIR]

The app (every feature on, the embedded store) is driven in process as metering_bench's
harness drives it, with each provider's upstream call (`_send_json`) answering at once with a
canned answer: everything the gateway does for a request (auth, decode, admission, the retry
loop and its try, the provider's request and the answer's reading, settle, the ledger's write,
the response) but the HTTP exchange. Under callgrind, the script run with SMALL and LARGE
requests (`PYTHONHASHSEED=0`, no .pyc written, `setarch -R`): per request = the difference
over LARGE - SMALL, so start-up cancels out. The ledger's thread writes in batches that follow
wall time (which callgrind stretches): counts spread by a few hundred instructions a request.
`--before DIR` counts that checkout's `gateway` package (with its built `_core`) in the same
run, before this one; `--tree DIR` counts another checkout instead of this one.
Decision 0011, issue 19zzzc.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

SMALL, LARGE = 50, 250

IMAGE_MODEL = """
[[models]]
id = "openai/img-bench"
provider = "openai"
upstream_model = "img-bench"
kind = "image"
usd_per_image = 0.04
capabilities = ["images"]
"""

# Per route: the path, the client's body and headers, the provider that answers and its answer.
ROUTES: dict[str, tuple[str, dict[str, Any], dict[str, str], str, dict[str, Any]]] = {
    "embeddings": (
        "/v1/embeddings",
        {"model": "openai/text-embedding-3-small", "input": "Say hello to the benchmark."},
        {},
        "openai",
        {
            "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -0.5, 0.125]}],
            "usage": {"prompt_tokens": 6, "total_tokens": 6},
        },
    ),
    "images": (
        "/v1/images/generations",
        {"model": "openai/img-bench", "prompt": "A lighthouse."},
        {},
        "openai",
        {"created": 1, "data": [{"url": "https://images.example/1.png"}]},
    ),
    "messages": (
        "/v1/messages",
        {
            "model": "anthropic/claude-sonnet-4",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        },
        {"anthropic-version": "2023-06-01"},
        "anthropic",
        {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4",
            "content": [{"type": "text", "text": "Hello, benchmark."}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 12, "output_tokens": 4},
        },
    ),
}


def run_requests(route: str, requests: int) -> None:
    """The measured program (run under valgrind with `--requests`)."""
    import orjson
    import uvloop

    from gateway.app import create_app
    from gateway.settings import load_settings
    from loadtests.bench.metering_bench import ADMIN, Harness

    path, body, headers, provider_name, answer = ROUTES[route]

    class RouteHarness(Harness):
        def __init__(self, directory: Path) -> None:
            config = directory / "klawd.toml"
            config.write_text(f'[store]\nurl = "sqlite:///{directory}/klawd.db"\n{IMAGE_MODEL}')
            environ = {
                "KLAWD_ADMIN_TOKEN": ADMIN,
                "OPENAI_API_KEY": "sk-bench",
                "ANTHROPIC_API_KEY": "sk-ant-bench",
            }
            self.app = create_app(load_settings(config), environ)
            self.lifespan_state: dict[str, Any] = {}
            self._lifespan_queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            self._sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
            self._task: asyncio.Task[None] | None = None

    async def answered(_upstream: object) -> Any:
        return orjson.loads(orjson.dumps(answer))  # a fresh answer, as read from the wire

    async def funded_key(harness: Harness) -> str:
        """An enterprise account's key, with credits and limits no request here reaches."""
        admin = {"authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
        account = {"name": "bench", "plan": "enterprise", "credits_usd": 1e6}
        _, made = await harness.request("POST", "/admin/accounts", orjson.dumps(account), admin)
        account_id = orjson.loads(made)["id"]
        limits = {"limits": {"requests_per_minute": 10**9, "requests_per_day": 10**9}}
        where = f"/admin/accounts/{account_id}"
        await harness.request("PATCH", where, orjson.dumps(limits), admin)
        _, made = await harness.request("POST", f"{where}/keys", b"{}", admin)
        key: str = orjson.loads(made)["key"]
        return key

    async def main(directory: Path) -> None:
        harness = RouteHarness(directory)
        await harness.start()
        provider = harness.lifespan_state["klawd"].providers[provider_name]
        provider._send_json = answered
        key = await funded_key(harness)
        sent = orjson.dumps(body)
        asked = headers | {"authorization": f"Bearer {key}", "content-type": "application/json"}
        for _ in range(requests):
            status, _answer = await harness.request("POST", path, sent, asked)
            assert status == 200, _answer
        await harness.stop()

    with tempfile.TemporaryDirectory() as directory:
        uvloop.run(main(Path(directory)))


def count(route: str, requests: int, tree: str | None) -> int:
    from loadtests.bench.measure import callgrind_total  # (here: the counted child need not)

    arguments = ["loadtests.bench.route_cost", "--route", route, "--requests", str(requests)]
    if tree:
        arguments += ["--tree", tree]
    return callgrind_total(arguments)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", default="embeddings,images,messages")
    parser.add_argument("--before", help="a checkout counted first, in the same run")
    parser.add_argument("--tree", help="another checkout's gateway package, instead of this one")
    parser.add_argument("--route", help=argparse.SUPPRESS)  # the measured run
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.requests is not None:
        if args.tree:
            sys.path.insert(0, str(Path(args.tree).resolve()))
        run_requests(args.route, args.requests)
        return
    trees = ([args.before] if args.before else []) + [args.tree]
    for route in args.routes.split(","):
        for tree in trees:
            small, large = count(route, SMALL, tree), count(route, LARGE, tree)
            per = (large - small) / (LARGE - SMALL)
            print(f"{route:11s} {tree or 'this checkout':24s} {per:12,.0f} instructions a request")


if __name__ == "__main__":
    main()
