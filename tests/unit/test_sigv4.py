"""The gateway's SigV4 signer gives the very signature botocore's signer gives for the same
request, credentials and time: paths with reserved characters (double-encoded), query strings,
extra headers with odd whitespace, with and without a session token, other regions and dates."""

from __future__ import annotations

from datetime import UTC, datetime
from unittest import mock

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gateway.providers.sigv4 import AwsCredentials, sign
from gateway.routing.catalog import Secret

KEY_ID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def botocore_headers(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    token: str | None,
    region: str,
    when: datetime,
) -> dict[str, str]:
    request = AWSRequest(method=method, url=url, headers=dict(headers), data=body)
    with mock.patch("botocore.auth.get_current_datetime", return_value=when.replace(tzinfo=None)):
        SigV4Auth(Credentials(KEY_ID, SECRET, token), "bedrock", region).add_auth(request)
    return {k.lower(): v for k, v in request.headers.items()}


CASES = [
    (
        "POST",
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        {"content-type": "application/json", "accept": "application/json"},
        b'{"messages":[{"role":"user","content":[{"text":"hi"}]}]}',
        "FwoGZXIvYXdzEXAMPLE//token==",
        "us-east-1",
        datetime(2026, 12, 3, 20, 50, 1, tzinfo=UTC),
    ),
    (
        "POST",
        "https://bedrock-runtime.eu-west-3.amazonaws.com/model/arn%3Aaws%3Abedrock%3Aeu-west-3%3A123456789012%3Ainference-profile%2Feu.anthropic.claude/converse-stream",
        {"Content-Type": "application/json", "X-Custom": "  two   spaces  "},
        "ünïcode body ✓".encode(),
        None,
        "eu-west-3",
        datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
    ),
    (
        "GET",
        "http://127.0.0.1:8123/model/m/list?b=2&a=1&c=x%20y&empty=",
        {},
        b"",
        "token",
        "us-west-2",
        datetime(2030, 1, 1, 0, 0, 0, tzinfo=UTC),
    ),
]


@pytest.mark.parametrize(("method", "url", "headers", "body", "token", "region", "when"), CASES)
def test_signature_equals_botocore(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    token: str | None,
    region: str,
    when: datetime,
) -> None:
    credentials = AwsCredentials(KEY_ID, Secret(SECRET), Secret(token) if token else None)
    ours = sign(method, url, headers, body, credentials, region, "bedrock", when)
    theirs = botocore_headers(method, url, headers, body, token, region, when)
    assert ours["authorization"] == theirs["authorization"]
    assert ours["x-amz-date"] == theirs["x-amz-date"]
    assert ours.get("x-amz-security-token") == theirs.get("x-amz-security-token")


def test_the_secret_is_never_in_the_headers_sent() -> None:
    credentials = AwsCredentials(KEY_ID, Secret(SECRET), None)
    signed = sign(
        "POST", CASES[0][1], {}, b"{}", credentials, "us-east-1", "bedrock", datetime.now(UTC)
    )
    assert all(SECRET not in value for value in signed.values())
    assert "Secret(" in repr(credentials) and SECRET not in repr(credentials)


def test_a_different_time_gives_a_different_signature() -> None:
    credentials = AwsCredentials(KEY_ID, Secret(SECRET), None)
    first = sign("POST", CASES[0][1], {}, b"", credentials, "us-east-1", "bedrock", CASES[0][6])
    later = datetime(2026, 12, 3, 20, 50, 2, tzinfo=UTC)
    second = sign("POST", CASES[0][1], {}, b"", credentials, "us-east-1", "bedrock", later)
    assert first["authorization"] != second["authorization"]
