"""Where an HTTP head ends in a read (`http_client.head_end`): after its first blank line, a
CRLF or bare-LF line followed by an empty one, whatever follows (a body of CRLF lines is not
searched to its end)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.providers.http_client import head_end

PIECES = [b"\n", b"\r\n", b"\r", b"a", b":", b" ", b"\n\n", b"\n\r\n", b"\r\n\r\n"]


def first_blank_line_end(window: bytes, start: int) -> int:
    """The reference: the earliest end of either blank line (ValueError when there is none)."""
    return min(
        at + len(blank) for blank in (b"\n\n", b"\n\r\n") if (at := window.find(blank, start)) >= 0
    )


def test_a_head_before_a_body_of_crlf_lines_ends_at_its_blank_line() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    body = b"data: {}\r\n\r\n" * 100
    assert head_end(head + body, 0) == len(head)
    assert head_end(b"HTTP/1.1 200 OK\nA: b\n\n" + body, 0) == len(b"HTTP/1.1 200 OK\nA: b\n\n")


@given(st.lists(st.sampled_from(PIECES), max_size=30), st.integers(0, 40))
def test_the_end_is_the_first_blank_line_s(pieces: list[bytes], start: int) -> None:
    window = b"".join(pieces)
    start = min(start, len(window))
    try:
        expected = first_blank_line_end(window, start)
    except ValueError:
        with pytest.raises(ValueError):
            head_end(window, start)
        return
    assert head_end(window, start) == expected
