"""The event log's `/` filter: words that keep only the lines they match.

A word that names a subsystem (`tamiyo`, `tezzeret`, ...) keeps that subsystem's lines, one that names a level
(`info`, `warning`, `error`) keeps that level's, and `source:NAME` / `level:NAME` say so explicitly; any other
word must appear in the line's text (case does not matter). Every word must match: `tamiyo prune` is Tamiyo's
prunes. The same words filter the whole scrollback, not only what the panel shows.
"""

from __future__ import annotations

from typing import NamedTuple

from esper_tui.engine.snapshot import EventLine
from esper_tui.engine.vocabulary import Level, Subsystem

_SUBSYSTEMS = {s.value for s in Subsystem}
_LEVELS = {level.value for level in Level}


class EventFilter(NamedTuple):
    sources: frozenset[str] = frozenset()
    levels: frozenset[str] = frozenset()
    words: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> EventFilter:
        sources: set[str] = set()
        levels: set[str] = set()
        words: list[str] = []
        for word in text.lower().split():
            key, _, value = word.partition(":")
            if value and key == "source":
                sources.add(value)
            elif value and key == "level":
                levels.add(value)
            elif word in _SUBSYSTEMS:
                sources.add(word)
            elif word in _LEVELS:
                levels.add(word)
            else:
                words.append(word)
        return cls(frozenset(sources), frozenset(levels), tuple(words))

    @property
    def empty(self) -> bool:
        return not (self.sources or self.levels or self.words)

    def matches(self, line: EventLine) -> bool:
        if self.sources and line.source.value not in self.sources:
            return False
        if self.levels and line.level.value not in self.levels:
            return False
        if self.words:
            text = line.text.lower()
            return all(word in text for word in self.words)
        return True
