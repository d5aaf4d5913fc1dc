"""Many concurrent long streams at once: time to first byte, completion, lateness.

    python loadtests/bench/long_streams.py URL BODY_JSON HEADERS_JSON COUNT NOMINAL_S RAMP_S

Opens COUNT streams (one connection each), their starts spread evenly over RAMP_S seconds (0:
all at once), so that all COUNT are open together once the ramp is over (RAMP_S < NOMINAL_S);
reads each to the end and prints one JSON object: ttfb_ms p50/p99, how many completed with
`data: [DONE]`, how many within the nominal duration + 20% + 0.5 s, and the slowest.
Bounded: every stream has a timeout of 3x nominal + 10 s.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import aiohttp
import orjson


async def one(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], delay_s: float
) -> tuple[float | None, float, bool]:
    await asyncio.sleep(delay_s)
    started = time.perf_counter()
    first: float | None = None
    tail = b""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            async for chunk in response.content.iter_any():
                if first is None:
                    first = time.perf_counter() - started
                tail = (tail + chunk)[-32:]
            ok = response.status == 200 and tail.endswith(b"data: [DONE]\n\n")
    except (aiohttp.ClientError, TimeoutError):
        ok = False
    return first, time.perf_counter() - started, ok


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main() -> None:
    url, body, headers_json, count_text, nominal_text, ramp_text = sys.argv[1:7]
    headers = orjson.loads(headers_json) | {"content-type": "application/json"}
    count, nominal, ramp = int(count_text), float(nominal_text), float(ramp_text)
    timeout = aiohttp.ClientTimeout(total=3 * nominal + 10)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        results = await asyncio.gather(
            *(one(session, url, body.encode(), headers, i * ramp / count) for i in range(count))
        )
    ttfb = [r[0] * 1000 for r in results if r[0] is not None]
    durations = [r[1] for r in results]
    completed = sum(1 for r in results if r[2])
    on_time = sum(1 for r in results if r[2] and r[1] <= nominal * 1.2 + 0.5)
    print(
        orjson.dumps(
            {
                "streams": count,
                "completed": completed,
                "on_time": on_time,
                "ttfb_p50_ms": statistics.median(ttfb) if ttfb else None,
                "ttfb_p99_ms": percentile(ttfb, 0.99) if ttfb else None,
                "slowest_s": max(durations),
            }
        ).decode()
    )


if __name__ == "__main__":
    asyncio.run(main())
