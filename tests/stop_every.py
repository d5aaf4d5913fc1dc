"""A command run as a shared machine's frozen benchmark runs leave it: its whole process group
(pytest, the gateways and redis-servers it starts, their children) SIGSTOPped for `--stop`
seconds every `--every` seconds, then SIGCONTed together. Not part of the suite: a check that
the tests' waits count running time, not wall time (tests/live_bound.py; decision 0001, "The
suite on a busy machine").

    .venv/bin/python -m tests.stop_every --stop 4 --every 10 --bound 600 -- \
        .venv/bin/pytest -q -p no:cacheprovider tests/providers/test_conformance.py

Bounded: the command is killed (its group) after `--bound` seconds; the exit status is the
command's (124 when the bound cut it). Each stop is printed with its UTC time to stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def stamp() -> str:
    return time.strftime("%H:%M:%S", time.gmtime())


def run(command: list[str], stop_s: float, every_s: float, bound_s: float) -> int:
    process = subprocess.Popen(command, start_new_session=True)  # a process group of its own
    group = process.pid
    deadline = time.monotonic() + bound_s
    stops = 0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                print(f"stop_every: {stamp()} bound of {bound_s:g} s reached", file=sys.stderr)
                os.killpg(group, signal.SIGKILL)
                process.wait()
                return 124
            try:
                return process.wait(timeout=min(every_s - stop_s, left))
            except subprocess.TimeoutExpired:
                pass
            os.killpg(group, signal.SIGSTOP)
            stops += 1
            print(f"stop_every: {stamp()} stop {stops} ({stop_s:g} s)", file=sys.stderr)
            time.sleep(stop_s)
            os.killpg(group, signal.SIGCONT)
    finally:
        if process.poll() is None:  # (interrupted: leave nothing stopped or running)
            os.killpg(group, signal.SIGCONT)
            os.killpg(group, signal.SIGKILL)
            process.wait()
        print(f"stop_every: {stamp()} {stops} stops", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stop", type=float, default=4.0, help="seconds stopped each time")
    parser.add_argument("--every", type=float, default=10.0, help="seconds from stop to stop")
    parser.add_argument("--bound", type=float, default=600.0, help="seconds before the kill")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.every <= args.stop:
        parser.error("a command, and --every longer than --stop")
    return run(command, args.stop, args.every, args.bound)


if __name__ == "__main__":
    sys.exit(main())
