"""Archives: where transcoded and kept instances are stored and indexed."""

from transcode.archive.identity import ArchiveMismatch
from transcode.archive.layout import InvalidUID, check_uid
from transcode.archive.store import Archive, ArchiveBusy, ArchiveReadOnly, FolderArchive

__all__ = ["Archive", "ArchiveBusy", "ArchiveMismatch", "ArchiveReadOnly", "FolderArchive", "InvalidUID", "check_uid"]
