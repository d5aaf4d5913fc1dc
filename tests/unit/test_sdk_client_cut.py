"""An official SDK client whose making is cut (a test's timeout fires inside it) leaves nothing
that fails a later test. The SDK's HTTP client builds its transports, loading the CA bundle,
before httpx's `__init__` gives it any state; cut there, it is collected later, in whatever
test runs then, and its `__del__` raised AttributeError ('_state'), which `filterwarnings =
error` made that test's failure (tests/integration/test_responses_kept.py in session 29's
suite, its `gc.collect()` finding one cut by a timeout in test_response_cache.py). The
conftest's `sdk_clients_cut_while_made_are_not_finalized`. (The openai SDK's client gets its
state first: not exposed.)"""

from __future__ import annotations

import gc
import sys
from typing import Any

import anthropic
import httpx2
import pytest


class Cut(BaseException):
    """What a test's timeout raises in its thread (no `except Exception` stops it)."""


def test_an_anthropic_client_cut_while_it_is_made_leaves_no_error_for_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unraised: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", unraised.append)

    def cut(*args: Any, **kwargs: Any) -> None:
        raise Cut

    monkeypatch.setattr(httpx2.HTTPTransport, "__init__", cut)
    with pytest.raises(Cut):
        anthropic.Anthropic(api_key="sk-ant-test", base_url="http://127.0.0.1:9", max_retries=0)
    gc.collect()
    assert [str(u.exc_value) for u in unraised] == []
