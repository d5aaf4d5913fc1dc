"""A fake Vertex AI on loopback, with its own OAuth token endpoint.

- `POST /token`: the JWT bearer grant (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`,
  `assertion=<JWT>`); the JWT's RS256 signature is verified with the service account's public
  key, its `iss`, `aud` (Google's token endpoint URL) and `exp` checked, as Google does; answers
  `{"access_token", "expires_in", "token_type": "Bearer"}` (a new token each time, so tests can
  count refreshes), or 400 `invalid_grant`.
- `POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent` and
  `:streamGenerateContent?alt=sse`: the Gemini fake's answers (tests/fakes/gemini_upstream.py).
- `POST …/publishers/anthropic/models/{m}:rawPredict` and `:streamRawPredict`: the Anthropic
  fake's answers (tests/fakes/anthropic_upstream.py); the body must carry an
  `anthropic_version` and no `model`.
Every model call needs `Authorization: Bearer <a token this fake issued and that has not
expired>` (else 401 UNAUTHENTICATED, Google's error shape). Models named `*-exhausted` answer
429 RESOURCE_EXHAUSTED; streamed, `*-cut` models are cut mid-way and `gemini-error-event` /
`claude-error-event` end with their format's error event (UNAVAILABLE / overloaded_error).
"""

from __future__ import annotations

import base64
import itertools
import time
from typing import Any
from urllib.parse import parse_qs

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes import anthropic_upstream, gemini_upstream
from tests.fakes.openai_upstream import awkward_pieces
from tests.fakes.server import ThreadedServer, cut_connection

PROJECT = "klawd-test-project"
LOCATION = "us-central1"
CLIENT_EMAIL = "gateway@klawd-test-project.iam.gserviceaccount.com"
TOKEN_PREFIX = "ya29.fake-SECRET-access-token-"
# Google's token endpoint wants this audience whatever the token_uri (google-auth sends it too).
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeVertex(ThreadedServer):
    def __init__(self, token_lifetime_s: int = 3600) -> None:
        super().__init__()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.token_lifetime_s = token_lifetime_s
        self.tokens: dict[str, float] = {}  # issued token -> expiry (unix time)
        self.token_requests = 0
        self._counter = itertools.count(1)

    def service_account_info(self) -> dict[str, str]:
        """What a downloaded service-account key file holds, pointing at this fake."""
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        return {
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "fake-key-id-1",
            "private_key": pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "token_uri": f"{self.origin}/token",
        }

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/token", self._token)
        app.router.add_post(
            "/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{target}",
            self._predict,
        )

    def _verify_jwt(self, assertion: str) -> str | None:
        """None when valid, else the reason."""
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = orjson.loads(_b64url_decode(header_b64))
            claims = orjson.loads(_b64url_decode(claims_b64))
            self.key.public_key().verify(
                _b64url_decode(signature_b64),
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, InvalidSignature, orjson.JSONDecodeError):
            return "Invalid JWT Signature."
        if header.get("alg") != "RS256":
            return "Invalid JWT: alg must be RS256."
        if claims.get("iss") != CLIENT_EMAIL or claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            return "Invalid JWT: iss or aud mismatch."
        if not claims.get("scope") or not claims.get("exp") or claims["exp"] < time.time():
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        return None

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        form = parse_qs((await request.read()).decode())
        self.record(request, {k: v[0] for k, v in form.items()}, kind="token")
        grant = form.get("grant_type", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        reason = self._verify_jwt(form.get("assertion", [""])[0])
        if reason is not None:
            return web.json_response(
                {"error": "invalid_grant", "error_description": reason}, status=400
            )
        token = f"{TOKEN_PREFIX}{next(self._counter)}"
        self.tokens[token] = time.time() + self.token_lifetime_s
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}
        )

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("authorization", "")
        token = given.removeprefix("Bearer ")
        return given.startswith("Bearer ") and self.tokens.get(token, 0) > time.time()

    async def _predict(self, request: web.Request) -> web.StreamResponse:
        publisher = request.match_info["publisher"]
        model, _, method = request.match_info["target"].partition(":")
        raw = await request.read()
        body: Any = orjson.loads(raw) if raw else {}
        self.record(request, body, kind="predict", publisher=publisher, model=model, method=method)
        if not self._authorized(request):
            return web.json_response(
                gemini_upstream.error_body(
                    401, "UNAUTHENTICATED", "Request had invalid authentication credentials."
                ),
                status=401,
            )
        if request.match_info["project"] != PROJECT or request.match_info["location"] != LOCATION:
            return web.json_response(
                gemini_upstream.error_body(404, "NOT_FOUND", "Project or location not found."),
                status=404,
            )
        if model.endswith("-exhausted"):
            return web.json_response(
                gemini_upstream.error_body(
                    429, "RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com."
                ),
                status=429,
            )
        if publisher == "google":
            return await self._gemini(request, model, method, body)
        if publisher == "anthropic":
            return await self._anthropic(request, model, method, body)
        return web.json_response(
            gemini_upstream.error_body(404, "NOT_FOUND", "Publisher not found."), status=404
        )

    async def _gemini(
        self, request: web.Request, model: str, method: str, body: Any
    ) -> web.StreamResponse:
        if not body.get("contents"):
            return web.json_response(
                gemini_upstream.error_body(400, "INVALID_ARGUMENT", "contents is not specified"),
                status=400,
            )
        if method == "generateContent":
            return web.json_response(gemini_upstream.response(model))
        if method != "streamGenerateContent" or request.query.get("alt") != "sse":
            return web.json_response(
                gemini_upstream.error_body(400, "INVALID_ARGUMENT", "stream with alt=sse"),
                status=400,
            )
        return await self._stream(request, gemini_upstream.stream_events(model), model)

    async def _anthropic(
        self, request: web.Request, model: str, method: str, body: Any
    ) -> web.StreamResponse:
        # Vertex requires a version in the body (the documented one is vertex-2023-10-16; the
        # anthropic SDK installed here sends its own API version) and refuses `model`.
        if not body.get("anthropic_version") or "model" in body:
            return web.json_response(
                anthropic_upstream.error_body(
                    "invalid_request_error",
                    "anthropic_version: Field required; model: Extra inputs are not permitted",
                ),
                status=400,
            )
        if method == "rawPredict":
            return web.json_response(anthropic_upstream.message(model))
        if method != "streamRawPredict":
            return web.json_response(
                anthropic_upstream.error_body("not_found_error", "unknown method"), status=404
            )
        return await self._stream(request, anthropic_upstream.stream_events(model), model)

    async def _stream(
        self, request: web.Request, events: list[bytes], model: str
    ) -> web.StreamResponse:
        stream = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await stream.prepare(request)
        if model.endswith("-cut"):  # some events, then the connection is cut
            await stream.write(b"".join(events[:2]) + events[2][:15])
            return await cut_connection(request, stream)
        if model == "gemini-error-event":
            await stream.write(events[0])
            error = gemini_upstream.error_body(503, "UNAVAILABLE", "The model is overloaded.")
            await stream.write(gemini_upstream.sse(error))
        elif model == "claude-error-event":
            await stream.write(b"".join(events[:5]))
            error = anthropic_upstream.error_body("overloaded_error", "Overloaded")
            await stream.write(anthropic_upstream.event("error", error))
        else:
            for piece in awkward_pieces(events):
                await stream.write(piece)
        await stream.write_eof()
        return stream
