"""Whose library this is: the fingerprint of its signing key, recorded beside it and checked.

A signature that fails with the library's own key means the artifact was altered: quarantine it. One that
fails with any other key means nothing about the artifact, only that this process holds the wrong key: an
engine that made up a key of its own once failed every signature at start and quarantined every version,
for every machine of a shared library. So the first process that opens a library records its key's
fingerprint (keys.fingerprint: never the key), a process with another key is refused at start with both
fingerprints named, and a signature failure quarantines only when the verifying key is the recorded one.

A library from before the record (an upgraded catalog, an older state directory) is adopted by the first
key that verifies at least one of its versions, never by one that verifies none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from esper_tui.engine.kernels.compiled import KernelError
from esper_tui.engine.keys import SIGNING_KEY, fingerprint
from esper_tui.engine.library import signing


class LibraryKeyError(Exception):
    """This process's key could not be confirmed as the library's (another key, or the record unreadable);
    one line, naming fingerprints only."""


class ForeignKey(KernelError):
    """A signature failed with a key that is not the library's: nothing is quarantined, nothing is loaded."""


def adopt(
    key: bytes,
    *,
    where: str,
    recorded: Callable[[], str | None],
    record: Callable[[str], str],
    signed: Callable[[], Iterable[tuple[bytes, str]]],
    claim: bool,
    remedy: str = "",
) -> None:
    """Check that `key` is the library's, recording it first when nothing is and `claim` allows (a read-only
    tool does not claim). `signed` yields every stored (document, signature); raises LibraryKeyError."""
    ours = fingerprint(key)
    theirs = recorded()
    if theirs is None and claim:
        documents = list(signed())
        if documents and not any(signing.verify(key, doc, sig) for doc, sig in documents):
            raise LibraryKeyError(
                f"{where}: none of its {len(documents)} versions verifies with signing key {ours}, so it is not "
                f"this library's key: give this process the key that signed it ({SIGNING_KEY.env}){remedy}"
            )
        theirs = record(ours)
    if theirs is not None and theirs != ours:
        raise LibraryKeyError(
            f"{where} is signed with key {theirs}, but this process's signing key is {ours}: give it the "
            f"library's key ({SIGNING_KEY.env}){remedy}; nothing was quarantined"
        )


def guard(key: bytes, recorded: str | None, label: str) -> None:
    """Before quarantining for a failed signature: raise ForeignKey when the library records another key."""
    ours = fingerprint(key)
    if recorded is not None and recorded != ours:
        raise ForeignKey(
            f"{label}: signature check failed with key {ours}, which is not the library's ({recorded}): not quarantined"
        )
