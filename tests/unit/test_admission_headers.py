"""The admission's rate-limit headers: the bytes form the chat route sends is the dictionary
every other route encodes, header for header and in the same order."""

from __future__ import annotations

import pytest

from gateway.api.common import encode_headers
from gateway.limits import Admission


@pytest.mark.parametrize("reset_s", [0.0, 0.2, 5.0, 5.000001, 86_399.5])
def test_the_bytes_headers_are_the_encoded_dictionary(reset_s: float) -> None:
    admission = Admission(
        outcome="admitted",
        retry_after_s=0.0,
        limit_requests=1_000_000_000,
        remaining_requests=999_999_999,
        reset_requests_s=reset_s,
        limit_requests_day=100,
        remaining_requests_day=0,
    )
    assert admission.raw_headers() == encode_headers(admission.headers())
