"""The shared library's user blueprints: the signed record in a PostgreSQL row (`user_blueprints`, migration 4),
the source in the object store under its sha256, like every kernel file (content-addressed: an upload is
idempotent, and removing a blueprint leaves the bytes another record may name)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from esper_tui.engine.library.catalog_db import CatalogError, PgCatalog
from esper_tui.engine.library.objects import ObjectCorrupt, ObjectMissing, ObjectStore, StoreError
from esper_tui.engine.library.userbp import UserBlueprintError, UserBlueprintInvalid, UserBlueprintRecord

T = TypeVar("T")


def _one_line(call: Callable[[], T]) -> T:
    """The catalog's and the store's failures as UserBlueprintError (their messages are one line already)."""
    try:
        return call()
    except (CatalogError, StoreError) as exc:
        raise UserBlueprintError(str(exc)) from None


class SharedRecords:
    """A `RecordBackend` over a shared library's catalog and object store."""

    def __init__(self, db: PgCatalog, store: ObjectStore) -> None:
        self.db = db
        self.store = store

    def create(self, record: UserBlueprintRecord, document: bytes, signature: str, source: bytes) -> bool:
        _one_line(lambda: self.store.put(record.source_sha256, source))  # the bytes first: a row never names none
        return _one_line(
            lambda: self.db.create_user_blueprint(
                record.name, record.source_sha256, document, signature, record.status.value, record.submitted_by
            )
        )

    def replace(self, record: UserBlueprintRecord, document: bytes, signature: str) -> bool:
        return _one_line(
            lambda: self.db.replace_user_blueprint(record.name, document, signature, record.status.value, record.reason)
        )

    def read(self, name: str) -> tuple[bytes, str] | None:
        row = _one_line(lambda: self.db.user_blueprint(name))
        return None if row is None else (row[0], row[1])

    def source(self, name: str, sha256: str) -> bytes:
        try:
            return self.store.get(sha256)
        except (ObjectMissing, ObjectCorrupt) as exc:
            raise UserBlueprintInvalid(f"{name}: source {sha256[:12]}: {exc}") from None
        except StoreError as exc:
            raise UserBlueprintError(f"{name}: {exc}") from None

    def names(self) -> list[str]:
        return _one_line(self.db.user_blueprint_names)

    def delete(self, name: str) -> bool:
        return _one_line(lambda: self.db.delete_user_blueprint(name))
