"""A minimal valid DICOM instance around a benchmark frame, so the full
pipeline and pydicom's own `Dataset.compress` can be timed on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def dataset_for(frames: np.ndarray, bits: int, *, study: str | None = None, series: str | None = None,
                number: int = 1) -> Dataset:
    """`frames`: one frame (rows, columns[, 3]) or several (n, rows, columns[, 3])."""
    colour = frames.shape[-1] == 3 and frames.ndim in (3, 4) and frames.shape[-2] != 3
    single = frames.ndim == (3 if colour else 2)
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), series or generate_uid()
    ds.Modality, ds.InstanceNumber = "OT", number
    shape = frames.shape if single else frames.shape[1:]
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    if colour:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = frames.dtype.itemsize * 8
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelRepresentation = int(frames.dtype.kind == "i")
    if not single:
        ds.NumberOfFrames = frames.shape[0]
    ds.PixelData = np.ascontiguousarray(frames).astype(frames.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_instance(frames: np.ndarray, bits: int, path: Path, **ids: str | int) -> Path:
    dataset_for(frames, bits, **ids).save_as(path, enforce_file_format=True)  # type: ignore[arg-type]
    return path
