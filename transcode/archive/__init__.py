"""Archives: where transcoded and kept instances are stored and indexed."""

from transcode.archive.layout import InvalidUID, check_uid
from transcode.archive.store import Archive, ArchiveBusy, FolderArchive

__all__ = ["Archive", "ArchiveBusy", "FolderArchive", "InvalidUID", "check_uid"]
