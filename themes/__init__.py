"""Esper's own themes and the dashboard stylesheet.

Colours live here and only here: widgets refer to theme variables (`$success`, `$warning`, ...), so a
theme switch (command palette, or `[ui] theme` in the config) recolours everything consistently.
The semantic slots carry meaning on this dashboard: success = compiled / closed / healthy, warning =
in progress / half-open / conservative, error = failed / open, accent = panel titles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import App
from textual.theme import Theme

CSS_PATH = Path(__file__).with_name("esper.tcss")
"""The dashboard layout stylesheet (panel placement; each widget's look is in its DEFAULT_CSS)."""

ESPER_DARK = Theme(
    name="esper-dark",
    primary="#5AA9E6",
    secondary="#A48BE0",
    accent="#4FC8BE",
    warning="#E5B454",
    error="#EE6B73",
    success="#7BC96F",
    foreground="#D5DAE1",
    background="#0D1117",
    surface="#141A22",
    panel="#1C2430",
    dark=True,
    variables={
        "footer-key-foreground": "#4FC8BE",
        "block-cursor-background": "#27476A",
        "block-cursor-foreground": "#F0F4F8",
    },
)
"""Default: a dark control-room palette with well separated state colours."""

ESPER_LIGHT = Theme(
    name="esper-light",
    primary="#1F6FB2",
    secondary="#6B4FBB",
    accent="#0E7F76",
    warning="#A86A0B",
    error="#C2303A",
    success="#2D7D46",
    foreground="#1B222C",
    background="#F4F6F9",
    surface="#FFFFFF",
    panel="#DCE3EC",
    dark=False,
    variables={
        "footer-key-foreground": "#0E7F76",
        "block-cursor-background": "#C9DDF2",
        "block-cursor-foreground": "#1B222C",
    },
)
"""For bright rooms and screenshots in documents: the same meanings, darker inks."""

THEMES: tuple[Theme, ...] = (ESPER_DARK, ESPER_LIGHT)
DEFAULT_THEME = ESPER_DARK.name


def register_themes(app: App[Any]) -> None:
    """Make Esper's themes selectable in `app` (and in its command palette)."""
    for theme in THEMES:
        app.register_theme(theme)
