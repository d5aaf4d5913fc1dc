"""What the /v1/messages pass-through's upstream bodies cost a request, counted.

    .venv/bin/python -m loadtests.bench.messages_body [--tree DIR] [--tries one,retries,chain]
        [--head]

For each body of loadtests.bench.anthropic_request (parsed as the route parses the client's
body; writing it does not read its shape) and each way of trying (`one`: one target, one try;
`retries`: one target tried three times; `chain`: three targets, each its own model name), the
instructions per request of what the route and the Anthropic provider do to write the upstream
bodies: the route's `MessagesBody` (on the body it parsed), then per try its `MessagesCall`
and the provider's `_messages_request` (before 19zzzc the route's `MessagesCallFactory` made
them: counted so for such a tree). Under callgrind, the script run with 0 and with 200
requests, the difference over 200 (deterministic, as request_decode's; valgrind's own
`memcpy` counts a copy dearer than the C library's). `--tree DIR`: another checkout's
`gateway` package (with its built `_core`), for a before/after. `--head`: each try's header
lines too, as the HTTP client writes them (`_header_block`; none for headers a provider keeps
written out, `FixedHeaders`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if "--tree" in sys.argv:
    sys.path.insert(0, str(Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()))

import orjson

from gateway import _core
from gateway.api import messages
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import MessagesBody, MessagesCall
from gateway.providers.http_client import FixedHeaders, _header_block
from gateway.routing.catalog import CatalogEntry
from gateway.settings import ModelSettings, ProviderSettings
from loadtests.bench.anthropic_request import BODIES
from loadtests.bench.request_decode import instructions

SETTINGS = ProviderSettings(kind="anthropic", base_url="http://127.0.0.1:9")
PROVIDER = AnthropicProvider("anthropic", SETTINGS, None)
TARGETS = [
    CatalogEntry(ModelSettings(id=f"anthropic/m{i}", provider="anthropic"), SETTINGS, None)
    for i in range(3)
]
VERSION = "2023-06-01"
# Before 19zzzc: the route's per-request factory of each try's call (the forwarded headers
# in a dict).
FACTORY = getattr(messages, "MessagesCallFactory", None)


TRIES = {"one": TARGETS[:1], "retries": TARGETS[:1] * 3, "chain": TARGETS}


def calls(fields: dict[str, object], tries: str) -> list[MessagesCall]:
    """The route's calls of one request tried as `tries` says. `fields`: the body as the route
    parsed it (once a request, for its translation: not counted)."""
    if FACTORY is not None:
        factory = FACTORY(fields, {"anthropic-version": VERSION}, "msg_bench", True)
        return [factory.call(target) for target in TRIES[tries]]
    body = MessagesBody(fields)
    return [MessagesCall(body, VERSION, None, target, "msg_bench", True) for target in TRIES[tries]]


def request(fields: dict[str, object], tries: str) -> list[bytes]:
    """The upstream bodies of one request tried as `tries` says."""
    return [PROVIDER._messages_request(call).body for call in calls(fields, tries)]


def request_with_head(fields: dict[str, object], tries: str) -> list[str]:
    """`request`, and each try's header lines as the HTTP client writes them."""
    lines = []
    for call in calls(fields, tries):
        headers = PROVIDER._messages_request(call).headers
        lines.append(headers.block if type(headers) is FixedHeaders else _header_block(headers))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, help="another checkout's gateway package")
    parser.add_argument("--tries", default="one,retries,chain")
    parser.add_argument("--head", action="store_true", help="count the header lines too")
    parser.add_argument("--only", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.count is not None:  # one run under callgrind
        fields = orjson.loads(BODIES[args.only])
        make = request_with_head if args.head else request
        for _ in range(args.count):
            make(fields, args.tries)
        return
    print(f"gateway from {Path(_core.__file__).parent}")
    module = "loadtests.bench.messages_body"
    head = ("--head",) if args.head else ()
    for name, body in BODIES.items():
        for tries in args.tries.split(","):
            counted = [
                instructions(name, args.tree, n, module, ("--tries", tries, *head))
                for n in (0, 200)
            ]
            per = (counted[1] - counted[0]) / 200
            print(f"{name:30s} {len(body):6d} B  {tries:8s} {per:10.0f} instructions")


if __name__ == "__main__":
    main()
