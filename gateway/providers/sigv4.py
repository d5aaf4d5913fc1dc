"""AWS Signature Version 4 for the gateway's upstream requests (Bedrock), written against the
AWS reference ("Create a signed AWS API request") and checked against botocore's own signer.

    canonical request = METHOD \\n canonical URI \\n canonical query \\n canonical headers \\n
                        signed headers \\n hex(sha256(body))
    string to sign    = "AWS4-HMAC-SHA256" \\n amz-date \\n scope \\n hex(sha256(canonical request))
    scope             = date/region/service/aws4_request
    signing key       = HMAC chain "AWS4"+secret → date → region → service → "aws4_request"

The canonical URI is the request path URI-encoded once more (every service but S3 signs the
double-encoded path: `%3A` in a Bedrock model id is signed as `%253A`). Every header the
request carries is signed, plus `host`, `x-amz-date` and, with temporary credentials,
`x-amz-security-token`. Pure: the time is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

from gateway.routing.catalog import Secret

ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: Secret
    session_token: Secret | None = None


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def _host(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").encode("idna").decode("ascii")
    default = 443 if parts.scheme == "https" else 80
    if ":" in host:
        host = f"[{host}]"
    return host if parts.port in (None, default) else f"{host}:{parts.port}"


def canonical_query(query: str) -> str:
    """The URL's query is already URI-encoded: its pairs are sorted (by name, then value) as
    they are, which is what the spec's encode-then-sort gives for an encoded URL."""
    pairs = [item.partition("=")[::2] for item in query.split("&")] if query else []
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: AwsCredentials,
    region: str,
    service: str,
    now: datetime,
) -> dict[str, str]:
    """The headers to send: `headers` plus host-independent `x-amz-date`, the session token
    when there is one, and `authorization`. The HTTP client sends `host` itself (the same
    value that is signed here)."""
    amz_date = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    out = {k.lower(): v for k, v in headers.items() if k.lower() != "authorization"}
    out["x-amz-date"] = amz_date
    if credentials.session_token is not None:
        out["x-amz-security-token"] = credentials.session_token.reveal()
    to_sign = {**out, "host": _host(url)}
    names = sorted(to_sign)
    canonical_headers = "".join(f"{n}:{' '.join(to_sign[n].split())}\n" for n in names)
    signed_headers = ";".join(names)
    parts = urlsplit(url)
    canonical_request = "\n".join(
        (
            method.upper(),
            quote(parts.path or "/", safe="/~"),
            canonical_query(parts.query),
            canonical_headers,
            signed_headers,
            hashlib.sha256(body).hexdigest(),
        )
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        (ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest())
    )
    key = _hmac(f"AWS4{credentials.secret_access_key.reveal()}".encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out["authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )
    return out
