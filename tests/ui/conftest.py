"""Shared pieces for the dashboard tests: a recording link, an app factory and a notification spy."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from textual.pilot import Pilot

from esper_tui.links.base import StaticLink
from esper_tui.ui.app import EsperApp

from .fixtures import rich_snapshot

SIZE = (160, 50)
"""The terminal size every dashboard test runs at (the size the layout is designed for)."""


class NotificationSpy:
    """Records every toast the app shows, so tests can assert on what the operator was told."""

    def __init__(self, app: EsperApp) -> None:
        self.messages: list[tuple[str, str]] = []
        original = app.notify

        def notify(message: str, **kwargs: object) -> None:
            self.messages.append((message, str(kwargs.get("severity", "information"))))
            original(message, **kwargs)  # type: ignore[arg-type]

        app.notify = notify  # type: ignore[method-assign]

    def texts(self) -> list[str]:
        return [message for message, _ in self.messages]


@pytest.fixture
def link() -> StaticLink:
    return StaticLink(rich_snapshot())


@pytest.fixture
def make_app(link: StaticLink) -> Callable[..., EsperApp]:
    """Build an EsperApp over `link` with a notification spy attached (`link.set` first to vary it)."""

    def make(**kwargs: object) -> EsperApp:
        app = EsperApp(link, **kwargs)  # type: ignore[arg-type]
        app.spy = NotificationSpy(app)  # type: ignore[attr-defined]
        return app

    return make


async def settle(pilot: Pilot[object]) -> None:
    """Let queued commands reach the link and the screen catch up."""
    app = pilot.app
    assert isinstance(app, EsperApp)
    await pilot.pause()
    await app.wait_for_commands()
    await pilot.pause()
