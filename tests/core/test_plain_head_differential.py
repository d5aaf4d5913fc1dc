"""`_core.read_head` against httptools on random heads (a seeded, bounded run of the
differential check that found the Proxy-Connection difference: decision 0011, the review of
session 20). The heads come from a small grammar that hits the reader's edges: the status
line's version, code and reason; the names' case; whitespace around values and before the
colon; repeated and conflicting Content-Length and Transfer-Encoding; obs-fold; Connection
lists and Proxy-Connection; 1xx, 204 and 304; bare LF; NUL and other control bytes; obs-text;
long values. Every head `read_head` reads must read as httptools reads it (with the client's
leniencies): status, fields, keep-alive, and the message's end after the body it announced.
Every head it declines goes to httptools (the client's fallback), which must read it or refuse
it with its own parser error, never fail otherwise."""

from __future__ import annotations

import random

import httptools

from gateway import _core
from tests.core.test_plain_head import httptools_reads

HEADS = 4000
SEED = 19

CODES = [200, 200, 200, 201, 429, 500, 503, 404, 204, 304, 100, 101, 103]
REASONS = [b" OK", b" ", b"", b" Too Many Requests", b" a\tb", b" caf\xc3\xa9", b" x\x01"]
VERSIONS = [b"HTTP/1.1"] * 8 + [b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]
FIELDS: list[tuple[bytes, list[bytes]]] = [
    (
        b"Content-Length",
        [b"0", b"5", b"00005", b" 5", b"5 ", b"\t5", b"-1", b"5,5", b"5, 5", b"abc", b"",
         b"99999999999999999999", b"+5"],
    ),
    (b"Transfer-Encoding", [b"chunked", b"Chunked", b"gzip, chunked", b"chunked, gzip",
                            b"identity", b" chunked ", b"chunked,"]),
    (b"Content-Type", [b"text/event-stream", b"application/json", b"text/event-stream; x=1",
                       b"TEXT/EVENT-STREAM"]),
    (b"Connection", [b"close", b"keep-alive", b"Keep-Alive", b"CLOSE", b"keep-alive, Upgrade",
                     b"close, x", b"upgrade", b"te", b"", b" close "]),
    (b"Proxy-Connection", [b"close", b"keep-alive"]),
    (b"Content-Encoding", [b"gzip", b"identity"]),
    (b"Keep-Alive", [b"timeout=5"]),
    (b"Upgrade", [b"h2c", b"websocket"]),
    (b"Trailer", [b"x-checksum"]),
    (b"Retry-After", [b"3", b" 3 ", b"Wed, 21 Oct 2026 07:28:00 GMT"]),
    (b"X-Request-Id", [b"req_1", b"a\x00b", b"a\x7fb", b"\xff\xfe", b"  padded \t", b"a\rb",
                       b"x" * 3000, b"tab\tinside"]),
]  # fmt: skip


def cased(name: bytes, rng: random.Random) -> bytes:
    how = rng.randrange(4)
    if how == 0:
        return name
    if how == 1:
        return name.lower()
    if how == 2:
        return name.upper()
    return bytes(c ^ 0x20 if 65 <= c | 0x20 <= 90 + 32 and rng.random() < 0.5 else c for c in name)


# What a plain answer carries (the half of the heads built near the reader's edge of plain):
# the edges come from the case of names, the whitespace around values, obs-text, a Connection
# the reader takes or declines, and the framing (one Content-Length, or a chunked event stream).
TAME: list[tuple[bytes, list[bytes]]] = [
    (b"Content-Type", [b"application/json", b"text/plain"]),
    (b"Connection", [b"close", b"keep-alive", b"Keep-Alive", b"keep-alive, Upgrade"]),
    (b"Retry-After", [b"3", b" 3 "]),
    (b"X-Request-Id", [b"req_1", b"\xff\xfe", b"  padded \t", b"", b"x" * 3000]),
    (b"Vary", [b"a", b"b"]),
]


def head(rng: random.Random) -> bytes:
    """One whole head: half built anywhere in the grammar, half near plain (HTTP/1.1, CRLF, a
    final status with a body, one framing header)."""
    wild = rng.random() < 0.5
    eol = b"\n" if wild and rng.random() < 0.1 else b"\r\n"
    if wild:
        version, code, reason = rng.choice(VERSIONS), rng.choice(CODES), rng.choice(REASONS)
    else:
        version, code, reason = b"HTTP/1.1", rng.choice([200, 201, 429, 500, 503]), b" OK"
    pool = FIELDS if wild else TAME
    lines = []
    for _ in range(rng.randrange(6)):
        name, values = rng.choice(pool)
        colon = b" :" if wild and rng.random() < 0.05 else b":"
        space = rng.choice([b" ", b"", b"  ", b"\t"])
        lines.append(cased(name, rng) + colon + space + rng.choice(values))
        if wild and rng.random() < 0.05:
            lines.append(rng.choice([b" folded", b"\tfolded"]))  # obs-fold
    if not wild or rng.random() < 0.5:  # the framing of a plain answer
        if rng.random() < 0.7:
            lines.append(cased(b"Content-Length", rng) + b": " + str(rng.randrange(8)).encode())
        else:
            lines.append(cased(b"Transfer-Encoding", rng) + b": chunked")
            lines.append(cased(b"Content-Type", rng) + b": text/event-stream")
    rng.shuffle(lines)
    status_line = version + b" " + str(code).encode() + reason
    return eol.join([status_line, *lines]) + eol + eol


def test_every_head_read_in_rust_reads_as_httptools_reads_it_and_the_rest_falls_back() -> None:
    rng = random.Random(SEED)
    read = declined = 0
    for _ in range(HEADS):
        wire = head(rng)
        plain = _core.read_head(wire)
        if plain is None:
            declined += 1
            try:
                httptools_reads(wire + b"0\r\n\r\n")
            except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                pass  # refused by the fallback as the client refuses it (a broken answer)
            continue
        read += 1
        status, end, length, keep_alive = plain
        assert end == len(wire), wire
        body = b"0\r\n\r\n" if length == -1 else b"x" * length
        want_status, want_fields, want_keep_alive = httptools_reads(wire + body)
        assert (status, _core.head_fields(wire[:end]), keep_alive) == (
            want_status,
            want_fields,
            want_keep_alive,
        ), wire
    # the grammar reaches both sides, many times each
    assert read > HEADS // 10 and declined > HEADS // 10, (read, declined)
