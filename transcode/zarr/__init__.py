"""A zarr view of the archive for analysis code: a series as a 3-D array of
slices in patient order, a multi-frame instance as a 3-D array of frames,
resolution levels as an OME-Zarr (NGFF 0.5) multiscales pyramid.

    import zarr, transcode.zarr
    with FolderArchive("archive", read_only=True) as archive:
        image = zarr.open_group(transcode.zarr.open_series(archive, study, series), mode="r")
        quarter = image["2"][:]          # every slice at 1/4 of the side

The same keys are served read-only over HTTP under `/zarr/` (see
`transcode.server.zarrview`). Nothing is written: chunks are decoded on
demand from the stored frames (`store`).

This package is `transcode.zarr`; the zarr library is imported absolutely
(`import zarr`), which is the library, not this package.
"""

from __future__ import annotations

from transcode.archive.store import Archive
from transcode.server.frames import FrameReader
from transcode.server.lookup import Lookup
from transcode.zarr.layout import Volume, instance_volume, series_volume
from transcode.zarr.store import ViewStore

__all__ = ["ViewStore", "Volume", "open_instance", "open_series"]


def open_series(archive: Archive, study: str, series: str) -> ViewStore:
    """A read-only zarr store of the series (raises `Problem` 404 when it has
    no instances, 409 when its frames differ in size or pixel format)."""
    catalog = Lookup(archive.index)
    return ViewStore(catalog, FrameReader(archive), series_volume(catalog, study, series))


def open_instance(archive: Archive, study: str, series: str, sop: str) -> ViewStore:
    """A read-only zarr store of one (multi-frame) instance's frames."""
    catalog = Lookup(archive.index)
    return ViewStore(catalog, FrameReader(archive), instance_volume(catalog, study, series, sop))
