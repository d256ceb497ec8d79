"""What every resource handler needs: the archive, its catalog, the frame
reader, and how to build the URLs the client should follow."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from starlette.requests import Request

from transcode.archive.store import Archive
from transcode.catalog.base import InstanceRow
from transcode.server.cache import ReadCache
from transcode.server.frames import FrameReader
from transcode.server.lookup import Lookup
from transcode.server.responses import base_url


@dataclass
class Service:
    archive: Archive
    prefix: str = "/dicomweb"
    max_frames: int = 4096  # frames in one request (Limits.max_frames)
    read_cache: ReadCache | None = None  # frames read from an object store, kept (server.cache)
    catalog: Lookup = field(init=False)
    reader: FrameReader = field(init=False)

    def __post_init__(self) -> None:
        self.catalog = Lookup(self.archive.index)
        self.reader = FrameReader(self.archive, self.read_cache)
        self.header = functools.lru_cache(maxsize=64)(self._header)
        self.image_header = functools.lru_cache(maxsize=1024)(self._image_header)

    def url(self, request: Request, study: str, series: str | None = None, sop: str | None = None) -> str:
        """The WADO-RS URL of a study, series or instance."""
        url = f"{base_url(request, self.prefix)}/studies/{study}"
        if series:
            url += f"/series/{series}"
        if sop:
            url += f"/instances/{sop}"
        return url

    def instance_url(self, request: Request, row: InstanceRow) -> str:
        return self.url(request, row.study_uid, row.series_uid, row.sop_uid)

    def _header(self, row: InstanceRow) -> Dataset:
        """The stored object's data set without Pixel Data (for rendering
        and bulk data), cached: stored objects never change. A missing or
        short object raises StoredDataError (not cached)."""
        return self.reader.objects.header(row)

    def _image_header(self, row: InstanceRow) -> Dataset:
        """What rendering reads of the header: its group 0028 (the Image
        Pixel, Palette Color, Modality LUT and VOI LUT modules' elements:
        size, photometric interpretation, bits, rescale, windows, LUTs), kept
        for as many instances as the instance cache holds. `header` keeps the
        whole data set of fewer: a viewer rendering a 300-slice series read
        and parsed every file's header again on every request (1-2 ms each)."""
        return self.header(row).group_dataset(0x0028)
