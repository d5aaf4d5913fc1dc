"""The request log's lines, byte for byte: the fields, their order and their JSON as the lines
have always been written (docs/operations.md), whichever encoder writes them and on whichever
thread."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

from gateway.requestlog import BodyCapture, RequestLog, RequestRecord


def records() -> Iterator[tuple[RequestRecord, float, float | None]]:
    """Records with every field set, none, odd strings and odd numbers."""
    plain = RequestRecord("req_0123456789abcdef01234567", "POST")
    plain.route = "/v1/chat/completions"
    plain.status = 200
    plain.settled_status = 200
    plain.account_id = "acct_1"
    plain.plan = "free"
    plain.model = "openai/gpt-4o-mini"
    plain.provider = "openai"
    plain.prompt_tokens = 12
    plain.completion_tokens = 9
    plain.cost_usd = 0.000123
    plain.upstream_attempts = 1
    yield plain, 1.2345678, 0.98765
    odd = RequestRecord('id "quoted" \\ é漢\t', "GET")
    odd.route = "/v1/models"
    odd.status = 401
    yield odd, 0.0, None
    every = RequestRecord("req_every", "POST")
    every.route = "/v1/chat/completions"
    every.status = 200
    every.settled_status = 502
    every.account_id = "acct_2"
    every.plan = "pro"
    every.model = "anthropic/claude"
    every.provider = "anthropic"
    every.stream = True
    every.prompt_tokens = 5
    every.completion_tokens = 0
    every.cost_usd = 1.5e-05
    every.upstream_attempts = 3
    every.body_error = "bad_gateway"
    every.images_lost = 2
    every.cache = "miss"
    every.trace_id = "0af7651916cd43dd8448eb211c80319c"
    every.bodies = BodyCapture(8)
    every.bodies.request.add(b'{"model": "x"}')
    every.bodies.response.add("é".encode())
    yield every, 12345.6789, 3.0
    none = RequestRecord("req_none", "POST")
    none.settled_status = 499
    none.cost_usd = 0
    yield none, 1e-7, 1e-4
    big = RequestRecord("req_big", "POST")
    big.status = 429
    big.body_error = ""
    big.cache = ""
    big.bodies = BodyCapture(0)
    yield big, 987654321.25, 0.0005


EXPECTED = [
    (
        '{"event":"request","request_id":"req_0123456789abcdef01234567","method":"POST",'
        '"route":"/v1/chat/completions","status":200,"latency_ms":1.235,"ttfb_ms":0.988,'
        '"account_id":"acct_1","plan":"free","model":"openai/gpt-4o-mini",'
        '"provider":"openai","stream":false,"prompt_tokens":12,"completion_tokens":9,'
        '"cost_usd":0.000123,"retries":0}'
    ),
    (
        '{"event":"request","request_id":"id \\"quoted\\" \\\\ é漢\\t","method":"GET",'
        '"route":"/v1/models","status":401,"latency_ms":0.0,"ttfb_ms":null,"account_id":null,'
        '"plan":null,"model":null,"provider":null,"stream":false,"prompt_tokens":0,'
        '"completion_tokens":0,"cost_usd":0.0,"retries":0}'
    ),
    (
        '{"event":"request","request_id":"req_every","method":"POST",'
        '"route":"/v1/chat/completions","status":502,"latency_ms":12345.679,"ttfb_ms":3.0,'
        '"account_id":"acct_2","plan":"pro","model":"anthropic/claude",'
        '"provider":"anthropic","stream":true,"prompt_tokens":5,"completion_tokens":0,'
        '"cost_usd":0.000015,"retries":2,"http_status":200,'
        '"upstream_body_error":"bad_gateway","images_lost":2,"cache":"miss",'
        '"trace_id":"0af7651916cd43dd8448eb211c80319c",'
        '"request_body":"{\\"model\\"…[6 more bytes]","response_body":"é"}'
    ),
    (
        '{"event":"request","request_id":"req_none","method":"POST","route":"","status":499,'
        '"latency_ms":0.0,"ttfb_ms":0.0,"account_id":null,"plan":null,"model":null,'
        '"provider":null,"stream":false,"prompt_tokens":0,"completion_tokens":0,"cost_usd":0,'
        '"retries":0}'
    ),
    (
        '{"event":"request","request_id":"req_big","method":"POST","route":"","status":429,'
        '"latency_ms":987654321.25,"ttfb_ms":0.0,"account_id":null,"plan":null,"model":null,'
        '"provider":null,"stream":false,"prompt_tokens":0,"completion_tokens":0,'
        '"cost_usd":0.0,"retries":0,"upstream_body_error":"","cache":"","request_body":"",'
        '"response_body":""}'
    ),
]


def written_together(
    log: RequestLog, lines: list[tuple[RequestRecord, float, float | None]]
) -> None:
    """The lines written on an event loop, then the log closed: one batch for the writer."""

    async def write() -> None:
        for record, latency_ms, ttfb_ms in lines:
            log.add(record.entry(latency_ms, ttfb_ms))
        assert log.unwritten == 0, "gathered, not handed over yet"
        assert log.close()

    asyncio.run(write())


def test_lines_are_written_byte_for_byte_as_before() -> None:
    stream = io.StringIO()
    log = RequestLog(stream)
    log.start()
    written_together(log, [(record, latency, ttfb) for record, latency, ttfb in records()])
    assert stream.getvalue() == "".join(line + "\n" for line in EXPECTED)


def test_a_record_alone_makes_the_same_line() -> None:
    assert [record.line(latency, ttfb) for record, latency, ttfb in records()] == EXPECTED


def test_a_line_json_cannot_hold_is_left_out_and_the_writer_goes_on() -> None:
    stream = io.StringIO()
    log = RequestLog(stream)
    log.start()
    broken = RequestRecord("req_broken", "GET")
    broken.route = "/v1/\ud800"  # a lone surrogate: no UTF-8 for it
    before, after = RequestRecord("req_before", "GET"), RequestRecord("req_after", "GET")
    written_together(log, [(before, 1.0, None), (broken, 1.0, None), (after, 1.0, None)])
    assert [line[:36] for line in stream.getvalue().splitlines()] == [
        '{"event":"request","request_id":"req',
        '{"event":"request","request_id":"req',
    ]
    assert "req_before" in stream.getvalue() and "req_after" in stream.getvalue()
    assert log.unwritten == 0


class _TextWritesCounted(io.TextIOWrapper):
    text_writes = 0

    def write(self, text: str) -> int:
        self.text_writes += 1
        return super().write(text)


def test_a_utf8_text_stream_gets_the_batch_as_bytes_under_its_text_layer() -> None:
    """stderr (UTF-8): the writer writes the batch's JSON to the bytes under it as encoded,
    not decoded into a str for the text layer to encode again; the bytes are the same."""
    raw = io.BytesIO()
    stream = _TextWritesCounted(raw, encoding="utf-8", write_through=True)
    stream.write("a line of another writer, before\n")
    log = RequestLog(stream)
    log.start()
    written_together(log, [(record, latency, ttfb) for record, latency, ttfb in records()])
    assert stream.text_writes == 1  # (the test's own line)
    expected = "a line of another writer, before\n" + "".join(line + "\n" for line in EXPECTED)
    assert raw.getvalue() == expected.encode()


def test_a_text_stream_of_another_encoding_gets_text_through_its_encoder() -> None:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii", errors="backslashreplace")
    log = RequestLog(stream)
    log.start()
    written_together(log, [(record, latency, ttfb) for record, latency, ttfb in records()])
    expected = "".join(line + "\n" for line in EXPECTED)
    assert raw.getvalue() == expected.encode("ascii", errors="backslashreplace")
    assert raw.getvalue() != expected.encode()  # (the lines hold non-ASCII text)
