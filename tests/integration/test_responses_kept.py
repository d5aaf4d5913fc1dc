"""A streamed Responses answer is kept whole even if its client leaves as it ends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvloop

from gateway.store.base import StoredResponse
from tests.conftest import free_port, gateway_config
from tests.fakes.openai_upstream import FakeOpenAI
from tests.integration.test_streams_freed import started


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory, fake_openai: FakeOpenAI) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("kept") / "klawd.toml"
    gateway_config(path, free_port(), fake_openai.base_url)
    yield path


def test_a_client_that_leaves_during_the_store_write_of_a_generator_stream_keeps_it(
    config: Path,
) -> None:
    """The built-in echo model's stream is relayed by the generator (not stepped): its
    answer is written to the store while the client is still watched. A client that leaves
    as the write begins (it read the answer, or is about to) no longer cuts it: the answer
    is kept (a later GET finds it). Before, the disconnect cancelled the write: nothing kept."""

    async def main() -> tuple[StoredResponse | None, bytes]:
        async with started(config) as app:
            state = app.state["klawd"]
            store = state.store
            written: list[StoredResponse] = []

            class LeavingStore:
                """The app's store; the client leaves as a response's write begins."""

                def __getattr__(self, name: str) -> Any:
                    return getattr(store, name)

                async def put_response(self, stored: StoredResponse) -> None:
                    gone = app.clients[-1]
                    if not gone.done():
                        gone.set_result({"type": "http.disconnect"})
                    await asyncio.sleep(0.05)  # the disconnect is seen meanwhile
                    await store.put_response(stored)
                    written.append(stored)

            state.store = LeavingStore()
            try:
                body = {"model": "klawd/echo", "input": "one two three", "stream": True}
                status, answer = await app.request("/v1/responses", orjson.dumps(body), app.key)
                assert status == 200, answer
                for _ in range(20):  # a write still running after the request's end
                    if written:
                        break
                    await asyncio.sleep(0.05)
            finally:
                state.store = store
            if not written:
                return None, answer
            kept = written[0]
            return await store.get_response(kept.account_id, kept.id, int(time.time())), answer

    kept, answer = uvloop.run(asyncio.wait_for(main(), 30))
    assert kept is not None, f"nothing kept: {answer[-300:]!r}"
    assert kept.response["status"] == "completed"
    assert kept.response["id"].encode() in answer
