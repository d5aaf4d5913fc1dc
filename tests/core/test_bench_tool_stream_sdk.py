"""The Anthropic tool-call stream that `reframe_cost`'s `anthropic_tools` (and test_reframer's
`bench_anthropic_tools`) reframes: the bench's own body (loadtests/bench/contenders.py), read by
the official `anthropic` SDK from a loopback server as one text block and one tool call whose
arguments arrive in `input_json_delta` fragments, as Anthropic streams them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import orjson
import pytest
from aiohttp import web

from loadtests.bench import contenders
from tests.fakes.server import ThreadedServer

FIXTURE = Path(__file__).resolve().parents[2] / "rust_core/tests/fixtures/bench_anthropic_tools.sse"


class ToolStream(ThreadedServer):
    """`POST /v1/messages`: the fixture's bytes, as an event stream."""

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)

    async def _messages(self, request: web.Request) -> web.Response:
        self.record(request, orjson.loads(await request.read()))
        return web.Response(body=FIXTURE.read_bytes(), content_type="text/event-stream")


@pytest.fixture
def tool_stream() -> Iterator[ToolStream]:
    server = ToolStream()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_the_fixture_is_the_bench_s_tool_call_stream() -> None:
    assert FIXTURE.read_bytes() == b"".join(contenders.anthropic_tool_events())


def test_the_anthropic_sdk_reads_it_as_a_text_and_a_tool_call(tool_stream: ToolStream) -> None:
    with anthropic.Anthropic(
        api_key="sk-ant-test", base_url=tool_stream.origin, max_retries=0
    ) as sdk:
        with sdk.messages.stream(
            model="claude-bench", max_tokens=1024, messages=[{"role": "user", "content": "go"}]
        ) as stream:
            kinds = [event.type for event in stream]
            message = stream.get_final_message()
    assert kinds.count("input_json") == 295  # one per input_json_delta fragment
    text, tool = message.content
    assert text.type == "text" and text.text == "Writing it."
    assert tool.type == "tool_use" and tool.name == "write_file"
    arguments = tool.input
    assert isinstance(arguments, dict)
    assert arguments["path"] == "src/bench.py"
    assert str(arguments["content"]).count("\n") == contenders.TOOL_DELTAS
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 298
