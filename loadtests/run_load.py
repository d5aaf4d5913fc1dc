"""`make loadtest`: a gateway on the fake upstreams, then locust headless for a bounded time.

    .venv/bin/python loadtests/run_load.py --users 40 --seconds 30

Starts the fake OpenAI, Anthropic, Gemini and Replicate upstreams of the test suite (loopback),
one gateway process (embedded store) in front of them, creates the accounts the scenarios need
(enterprise keys, free-plan keys that will hit 429, pro keys for images), runs
`locust --headless` for `--seconds`, prints locust's summary and stops every process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import free_port, gateway_config, start_gateway, stop  # noqa: E402
from tests.fakes.anthropic_upstream import FakeAnthropic  # noqa: E402
from tests.fakes.gemini_upstream import FakeGemini  # noqa: E402
from tests.fakes.openai_upstream import FakeOpenAI  # noqa: E402
from tests.fakes.provider_config import PROVIDER_ENV, provider_config  # noqa: E402
from tests.fakes.replicate_upstream import FakeReplicate  # noqa: E402

# Enterprise accounts with their own limits far above what one machine can send: only the free
# accounts are meant to see 429s (the enterprise plan's 1,000/minute is within reach now).
UNLIMITED = {"requests_per_minute": 1_000_000_000, "requests_per_day": 1_000_000_000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--spawn-rate", type=float, default=20)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--accounts", type=int, default=20, help="of each kind")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 600:
        parser.error("--seconds must be within 1..600")

    openai, anthropic, gemini, replicate = (
        FakeOpenAI(),
        FakeAnthropic(),
        FakeGemini(),
        FakeReplicate(),
    )
    fakes = [openai, anthropic, gemini, replicate]
    for fake in fakes:
        fake.start()
    gateway = None
    try:
        with tempfile.TemporaryDirectory(prefix="klawd-load-") as tmp:
            directory = Path(tmp)
            port = free_port()
            extra = provider_config(anthropic.base_url, gemini.base_url, replicate.base_url)
            gateway_config(directory / "klawd.toml", port, openai.base_url, extra=extra)
            gateway = start_gateway(directory / "klawd.toml", port, PROVIDER_ENV)
            keys = {
                "unlimited": [
                    gateway.new_key("enterprise", 10_000.0, UNLIMITED) for _ in range(args.accounts)
                ],
                "limited": [gateway.new_key("free", 5.0) for _ in range(args.accounts)],
                "images": [gateway.new_key("pro", 1_000.0) for _ in range(args.accounts)],
            }
            keys_file = directory / "keys.json"
            keys_file.write_bytes(orjson.dumps(keys))
            command = [
                str(Path(sys.executable).parent / "locust"),
                "-f",
                str(REPO / "loadtests" / "locustfile.py"),
                "--headless",
                "--host",
                gateway.base_url,
                "--users",
                str(args.users),
                "--spawn-rate",
                str(args.spawn_rate),
                "--run-time",
                f"{args.seconds}s",
                "--stop-timeout",
                "10",
                "--exit-code-on-error",
                "0",
            ]
            print(f"gateway {gateway.base_url}; locust for {args.seconds} s", flush=True)
            result = subprocess.run(
                command,
                env={**gateway.env, "KLAWD_LOAD_KEYS": str(keys_file)},
                timeout=args.seconds + 120,
                check=False,
            )
            stop(gateway.process)
            gateway = None
            return result.returncode
    finally:
        if gateway is not None:
            stop(gateway.process)
        for fake in fakes:
            fake.stop()


if __name__ == "__main__":
    sys.exit(main())
