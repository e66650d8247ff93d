"""The one error a bad config raises: a single line naming the key (the CLI prints it and exits 2)."""

from __future__ import annotations


class ConfigError(ValueError):
    pass
