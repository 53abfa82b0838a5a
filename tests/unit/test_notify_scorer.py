"""The promotion's smoke check against a scorer that splits traffic between arms."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tasks.registry import notify_scorer


class _Reply:
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status_code, self._body, self.text = status, body, str(body)

    def json(self) -> dict[str, Any]:
        return self._body


def _scorer(monkeypatch: pytest.MonkeyPatch, quote: dict[str, Any], readyz: dict[str, Any]) -> None:
    def post(url: str, **kwargs: Any) -> _Reply:
        return _Reply(200, {"model_version": "7"} if url.endswith("/admin/reload") else quote)

    monkeypatch.setattr(httpx, "post", post)
    monkeypatch.setattr(httpx, "get", lambda url, **kwargs: _Reply(200, readyz))


def test_a_smoke_user_in_the_challenger_arm_is_checked_against_the_champion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quote shows the challenger's version 8; the champion (on /readyz) is the new 7: ok."""
    _scorer(monkeypatch, {"model_version": "8", "arm": "challenger"}, {"model_version": "7"})
    status, message = notify_scorer("http://scorer", "t", "7", ["i1"], "u1")
    assert status == "ok", message


def test_the_champion_arm_still_has_to_serve_the_new_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _scorer(monkeypatch, {"model_version": "6", "arm": "champion"}, {"model_version": "7"})
    status, message = notify_scorer("http://scorer", "t", "7", ["i1"], "u1")
    assert status == "failed" and "served version 6" in message
    # and a challenger-arm user does not hide a champion that did not swap
    _scorer(monkeypatch, {"model_version": "8", "arm": "challenger"}, {"model_version": "6"})
    assert notify_scorer("http://scorer", "t", "7", ["i1"], "u1")[0] == "failed"
