"""Python function calls per request, attributed to the phase of the request path they run in.

`request_cost --phases` and `stream_cost --phases` count every call event (Python functions,
coroutine resumptions and C builtins: the events cProfile counts, so the totals match its
`total_calls`) with `sys.setprofile`, and give each to a phase: the innermost frame on the
stack that is one of the phase functions below names it (so the metrics a settlement records
are "metrics", not "settlement"); a call with none on its stack (an I/O callback, a timer) goes
by the file of its own frame. Deterministic: independent of the machine's load.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

AUTH = "auth"
DECODE = "body, decode, route, allowlist"
ADMISSION = "admission (limits, reservation)"
UPSTREAM = "upstream call (retrier, provider, client)"
RESPONSE = "the response (headers, send)"
RELAY = "stream relay (reframed pieces)"
SETTLEMENT = "settlement (cost, ledger entry)"
METRICS = "metrics observations"
LOG_LINE = "the log line"
MIDDLEWARE = "middleware (request id, record, send wrapper)"
HANDLER = "the handler's own glue"
LOOP = "event loop, timers, other callbacks"
DRIVER = "the bench's driver (not the gateway's)"

# (file name, function name) -> phase. The innermost one on the stack wins.
FUNCTIONS: dict[tuple[str, str], str] = {
    ("auth.py", "authenticate"): AUTH,
    ("common.py", "read_body"): DECODE,
    ("openai.py", "decode_chat_request"): DECODE,
    ("anthropic.py", "decode_messages_request"): DECODE,
    ("messages.py", "to_chat_request"): DECODE,
    ("bounds.py", "check_messages_shape"): DECODE,
    ("router.py", "resolve_chat"): DECODE,
    ("metering.py", "allowed"): DECODE,
    ("metering.py", "start"): ADMISSION,
    ("metering.py", "admit"): ADMISSION,
    ("metering.py", "upstream_tokens_for_chat"): ADMISSION,
    ("metering.py", "chat_estimates"): ADMISSION,
    ("pending_admission.py", "served_ticket"): ADMISSION,
    ("pending_admission.py", "__aenter__"): ADMISSION,
    ("pending_admission.py", "__aexit__"): ADMISSION,
    ("pending_admission.py", "overlapping"): ADMISSION,
    ("pending_admission.py", "admitted_call"): UPSTREAM,
    ("pending_admission.py", "_overlapping_call"): UPSTREAM,
    ("chat.py", "_answer_attempt"): UPSTREAM,
    ("chat.py", "_stream_attempt"): UPSTREAM,
    ("messages.py", "complete"): UPSTREAM,
    ("messages.py", "open_stream"): UPSTREAM,
    ("retry.py", "call_targets"): UPSTREAM,
    ("retry.py", "_call_in_turn"): UPSTREAM,
    ("retry.py", "_serve_model"): UPSTREAM,
    ("common.py", "send_json_raw"): RESPONSE,
    ("common.py", "send_json_bytes"): RESPONSE,
    ("common.py", "encode_headers"): RESPONSE,
    ("limits.py", "raw_headers"): RESPONSE,
    ("limits.py", "headers"): RESPONSE,
    ("billing.py", "format_usd"): RESPONSE,
    ("streaming.py", "send_route_stream"): RESPONSE,
    ("streaming.py", "send_event_stream"): RESPONSE,
    ("chat.py", "relay"): RELAY,
    ("metering.py", "settle"): SETTLEMENT,
    ("metering.py", "charge_tokens"): SETTLEMENT,
    ("requestlog.py", "write"): LOG_LINE,
    ("requestlog.py", "line"): LOG_LINE,
    ("requestlog.py", "add"): LOG_LINE,
    ("requestlog.py", "rounded_entry"): LOG_LINE,
    ("observer.py", "http_finished"): METRICS,
    ("observer.py", "settled"): METRICS,
    ("observer.py", "admitted_or_refused"): METRICS,
    ("observer.py", "upstream_finished"): METRICS,
    ("observer.py", "stream_opened"): METRICS,
    ("observer.py", "stream_closed"): METRICS,
    ("observer.py", "retried"): METRICS,
    ("chat.py", "chat_completions"): HANDLER,
    ("messages.py", "create_message"): HANDLER,
    ("responses.py", "create_response"): HANDLER,
    ("responses.py", "_create_response"): HANDLER,
    ("middleware.py", "__call__"): MIDDLEWARE,
    ("middleware.py", "_serve"): MIDDLEWARE,
    ("middleware.py", "_limited"): MIDDLEWARE,
}
# A call with no phase function on its stack: by its own file.
FILES: dict[str, str] = {
    "http_client.py": UPSTREAM,
    "base.py": UPSTREAM,
    "requestlog.py": LOG_LINE,
    "metrics_buffer.py": METRICS,
    "metrics.py": METRICS,
    "metering_bench.py": DRIVER,
    "request_cost.py": DRIVER,
    "stream_cost.py": DRIVER,
    "read_cost.py": DRIVER,
}
ORDER = (
    MIDDLEWARE, AUTH, DECODE, ADMISSION, UPSTREAM, RESPONSE, RELAY, SETTLEMENT, METRICS,
    LOG_LINE, HANDLER, LOOP, DRIVER,
)  # fmt: skip


class PhaseCounter:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        # (phase, function) -> calls: which functions make up a phase (`detail`)
        self.functions: Counter[tuple[str, str]] = Counter()
        self._codes: dict[Any, str | None] = {}  # code object -> its phase, if a phase function

    def _phase_of_code(self, frame: FrameType) -> str | None:
        code = frame.f_code
        try:
            return self._codes[code]
        except KeyError:
            phase = FUNCTIONS.get((Path(code.co_filename).name, code.co_name))
            self._codes[code] = phase
            return phase

    def _phase(self, frame: FrameType) -> str:
        walk: FrameType | None = frame
        while walk is not None:
            phase = self._phase_of_code(walk)
            if phase is not None:
                return phase
            walk = walk.f_back
        return FILES.get(Path(frame.f_code.co_filename).name, LOOP)

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" or event == "c_call":
            phase = self._phase(frame)
            self.calls[phase] += 1
            if event == "call":
                code = frame.f_code
                name = f"{Path(code.co_filename).name}:{code.co_firstlineno} {code.co_qualname}"
            else:
                name = f"C {getattr(arg, '__qualname__', repr(arg))}"
            self.functions[(phase, name)] += 1

    @contextmanager
    def counting(self) -> Iterator[None]:
        sys.setprofile(self)
        try:
            yield
        finally:
            sys.setprofile(None)

    def table(self, per: int, title: str) -> list[str]:
        """A markdown table: calls per request (or stream) by phase, the driver's apart."""
        gateway = sum(n for phase, n in self.calls.items() if phase != DRIVER)
        lines = [f"| phase | {title} |", "| --- | ---: |"]
        for phase in ORDER:
            if self.calls[phase]:
                lines.append(f"| {phase} | {self.calls[phase] / per:.1f} |")
        lines.append(f"| the gateway in all (driver excluded) | {gateway / per:.1f} |")
        return lines

    def detail(self, per: int, phase: str, top: int = 30) -> list[str]:
        """The functions called most often in one phase, calls per request."""
        rows = sorted(
            ((n, name) for (p, name), n in self.functions.items() if p == phase), reverse=True
        )
        return [f"  {n / per:6.2f}  {name}" for n, name in rows[:top]]
