"""The burst's TTFB p99 pooled over rounds, and the per-event relay delay's reading
(report.pooled*, long_streams.Dechunker and relay_delays; decision 0012, 19zzzzf)."""

import asyncio
import time

from loadtests.bench import long_streams, report


def test_the_pooled_p99_reads_every_round_s_streams_together() -> None:
    # 200 streams in each of two rounds: each round's own p99 is its 3rd worst (199 * 0.99
    # rounds to index 197), the pooled one the 5th worst of 400 (399 * 0.99 -> 395)
    first = [1.0] * 190 + [50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 110.0, 120.0, 130.0, 140.0]
    second = [1.0] * 200
    assert report.percentile(first, 0.99) == 120.0
    assert report.percentile(second, 0.99) == 1.0
    assert report.pooled([first, second]) == 100.0
    assert report.pooled([[], []]) is None


def test_the_pooled_figure_is_one_value_whose_ratio_is_the_pooled_figures_ratio() -> None:
    samples = {
        "bare": {"ttfb_p99_ms": [10.0, 30.0]},
        "gateway-sqlite": {"ttfb_p99_ms": [5.0, 45.0]},
    }
    ttfb = {"bare": [[10.0] * 100, [20.0] * 100], "gateway-sqlite": [[5.0] * 100, [10.0] * 100]}
    pooled = report.with_pooled(samples, ttfb)
    assert pooled["bare"][report.POOLED] == [20.0]
    assert pooled["gateway-sqlite"][report.POOLED] == [10.0]
    assert report.ratio(pooled, "gateway-sqlite", "bare", report.POOLED) == 0.5
    assert report.POOLED not in samples["bare"]  # (a copy)
    lines = report.targets(pooled)
    assert (
        "- embedded: burst TTFB p99 ≤ bare's (ms; pooled over the rounds, 19zzzzf): 10.00 vs"
        " 20.00 → met" in lines
    )
    assert any(
        line.startswith("- embedded: burst TTFB p99 ≤ bare's (ms; median of the") for line in lines
    )
    assert not any("Redis ÷ embedded, " + report.POOLED in line for line in lines)


def test_the_interval_draws_whole_rounds_the_same_for_both() -> None:
    # round 2 of the gateway is slow, every other round even: the pooled ratio of a draw is 1
    # when it leaves round 2 out, above 1 when it takes it
    bare = [[10.0] * 100, [10.0] * 100, [10.0] * 100, [10.0] * 100]
    gateway = [[10.0] * 100, [40.0] * 100, [10.0] * 100, [10.0] * 100]
    low, high = report.pooled_ratio_interval(gateway, bare) or (0.0, 0.0)
    assert low == 1.0
    assert high == 4.0
    assert report.pooled_ratio_interval(gateway[:1], bare[:1]) is None
    # the same seed, the same interval
    assert report.pooled_ratio_interval(gateway, bare) == (low, high)


def test_the_pooled_lines_say_whether_the_interval_resolves_the_target() -> None:
    bare = [[20.0] * 100 for _ in range(4)]
    ttfb = {"bare": bare, "gateway-sqlite": [[10.0] * 100 for _ in range(4)]}
    line, _ = report.pooled_lines(ttfb)
    assert (
        "gateway-sqlite ÷ bare 0.50x (10.0 vs 20.0 ms, 95 % interval 0.50 to 0.50; ≤ 1 in" in line
    )
    assert "bare 20.0, 20.0, 20.0, 20.0 (pooled 20.0, of 400 streams)" in line
    ttfb["gateway-sqlite"] = [[10.0] * 100, [30.0] * 100, [10.0] * 100, [30.0] * 100]
    assert "the interval holds 1: not resolved by this run" in report.pooled_lines(ttfb)[0]
    assert report.pooled_lines({}) == []


def test_the_client_de_chunks_a_body_split_anywhere() -> None:
    body = b"data: a\n" + b"\n" + b"data: [DONE]\n\n"
    wire = b"8\r\ndata: a\n\r\n1\r\n\n\r\ne;ext=1\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    for split in range(len(wire) + 1):
        dechunker = long_streams.Dechunker()
        got = dechunker.feed(wire[:split]) + dechunker.feed(wire[split:])
        assert got == body, split
        assert dechunker.done


def test_a_whole_event_s_relay_delay_is_its_read_minus_its_stamp() -> None:
    events = [
        b'data: {"choices":[{"delta":{"content":"tok1 1765000000.250000"}}]}',
        b'data: {"choices":[{"delta":{"content":"tok2 1765000000.100"}}]}',  # before `since`
        b"data: [DONE]",
    ]
    delays = long_streams.relay_delays(events, 1765000000.2515, since=1765000000.2)
    assert [round(d, 3) for d in delays] == [1.5]


def test_the_first_wave_is_the_first_streams_opened_and_only_complete_ones_count() -> None:
    """relay_delay's split (19zzzzx): the first `count` streams opened (wrk's connections all
    start together) against the ones opened after them, each mean over complete streams."""
    answer = b"HTTP/1.1 200 OK\r\n\r\n5\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"

    def stream(
        started: float, ttfb_s: float, last_byte_s: float, whole: bool
    ) -> long_streams.Stream:
        made = long_streams.Stream(b"", None)  # type: ignore[arg-type]
        made.started, made.ttfb_s, made.last_byte_s = started, ttfb_s, last_byte_s
        made.status_ok = made.saw_done = True
        made.tail = answer[-32:] if whole else b""
        return made

    streams = [
        stream(3.0, 0.010, 1.010, True),  # the later wave, opened last
        stream(1.0, 0.060, 1.060, True),
        stream(2.0, 0.020, 1.020, True),  # later
        stream(1.1, 0.080, 1.080, True),
        stream(1.2, 0.900, 0.0, False),  # first wave, never complete: not counted
    ]
    found = long_streams.first_wave(streams, 3)
    assert round(found["ttfb_ms_first_mean"] or 0, 6) == 70.0
    assert round(found["stream_ms_first_mean"] or 0, 6) == 1070.0
    assert round(found["ttfb_ms_later_mean"] or 0, 6) == 15.0
    assert round(found["stream_ms_later_mean"] or 0, 6) == 1015.0
    assert long_streams.first_wave(streams[:2], 2)["ttfb_ms_later_mean"] is None


def test_a_kept_alive_slot_sends_each_next_request_on_the_same_connection() -> None:
    """`"keepalive": true` (as wrk does): the streams of a slot share one connection; here the
    server closes it after its third answer, which ends the slot."""
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\ne\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
    )
    accepted = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        for _ in range(3):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)  # the body, "{}"
            writer.write(answer)
        await writer.drain()
        writer.close()

    async def main() -> list[long_streams.Stream | None]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        spec = {"url": f"http://127.0.0.1:{port}/x", "body": "{}", "headers": {},
                "timeout_s": 5.0, "keepalive": True}  # fmt: skip
        async with server:
            return await long_streams.kept_slot(spec, 0.0, time.perf_counter() + 60)

    outcomes = asyncio.run(main())
    assert len(accepted) == 1
    streams = [s for s in outcomes if s is not None]
    assert [s.complete for s in streams][:3] == [True, True, True]
    assert len(streams) <= 4  # (a fourth request may be sent before the close is read)
