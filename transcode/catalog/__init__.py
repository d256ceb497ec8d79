"""The archive's catalog (base.py): SQLite in a folder, or PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

from transcode.catalog.base import Catalog, CatalogError

INDEX_FILE = "index.sqlite"
SCHEMES = ("postgresql", "postgres")


def is_url(where: object) -> bool:
    """Whether `where` is a PostgreSQL URL (else a folder)."""
    return isinstance(where, str) and where.split("://", 1)[0] in SCHEMES and "://" in where


def open_catalog(where: str | os.PathLike[str], *, read_only: bool = False) -> Catalog:
    """The catalog at `where`: a `postgresql://` (or `postgres://`) URL, or
    a folder holding `index.sqlite`. Nothing is created until `create`."""
    if is_url(where):
        try:
            from transcode.catalog.postgres import PostgresCatalog
        except ImportError as exc:
            raise CatalogError(f"a PostgreSQL catalog needs psycopg ({exc}): pip install 'transcode[postgres]'") \
                from None
        return PostgresCatalog(str(where), read_only=read_only)
    from transcode.catalog.sqlite import SQLiteCatalog

    return SQLiteCatalog(Path(where) / INDEX_FILE, read_only=read_only)
