"""Stores: objects by key with byte ranges and capabilities (base.py), and
their backends: a folder, memory, and S3 (imported from `transcode.stores.s3`
where needed, so that obstore loads only for an S3 archive)."""

from transcode.stores.base import (
           ByteRange,
           InvalidKey,
           ObjectMissing,
           ObjectTruncated,
           Store,
           StoreError,
           StoreReadOnly,
           StoreUnavailable,
)
from transcode.stores.folder import FolderStore
from transcode.stores.memory import MemoryStore

__all__ = ["ByteRange", "FolderStore", "InvalidKey", "MemoryStore", "ObjectMissing", "ObjectTruncated", "Store",
           "StoreError", "StoreReadOnly", "StoreUnavailable"]
