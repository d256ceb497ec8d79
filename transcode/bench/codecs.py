"""The codecs compared, each as encode(frame) -> bytes and decode(bytes, like) -> array.

All lossless. HTJ2K is encoded exactly as the pipeline does (same profile,
tiling and resolution-major order), so it is the bare codec work of a
transcode; the others run with their libraries' lossless defaults.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import imagecodecs
import numpy as np
from rle.utils import decode_frame as rle_decode_frame
from rle.utils import encode_pixel_data as rle_encode

from transcode.codecs import htj2k
from transcode.codecs.htj2k import EncodeSettings

BASELINE = "HTJ2K (OpenJPH)"


@dataclass(frozen=True)
class Codec:
    name: str
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes, np.ndarray], np.ndarray]


def _htj2k_encode(frame: np.ndarray) -> bytes:
    return htj2k.encode(frame, colour_transform=frame.ndim == 3, settings=EncodeSettings())[0]


def _rle_options(frame: np.ndarray) -> dict[str, int | str]:
    return {"rows": frame.shape[0], "columns": frame.shape[1], "samples_per_pixel": 1 if frame.ndim == 2 else 3,
            "bits_allocated": frame.dtype.itemsize * 8, "number_of_frames": 1, "byteorder": "<"}


def _rle_decode(data: bytes, like: np.ndarray) -> np.ndarray:
    out = rle_decode_frame(data, like.shape[0] * like.shape[1], like.dtype.itemsize * 8, "<")
    planes = np.frombuffer(out, dtype=like.dtype)  # planar: a sample plane after another
    shape = (like.shape[2], *like.shape[:2]) if like.ndim == 3 else like.shape
    arr = planes.reshape(shape)
    return np.moveaxis(arr, 0, -1) if like.ndim == 3 else arr


CODECS = [
    Codec(BASELINE, _htj2k_encode, lambda data, like: htj2k.decode(data)),
    Codec("J2K lossless (OpenJPEG)", lambda f: imagecodecs.jpeg2k_encode(f, level=0, reversible=True,
                                                                          codecformat="J2K"),
          lambda data, like: imagecodecs.jpeg2k_decode(data)),
    # CharLS takes unsigned samples: signed frames go as their 16-bit patterns (what DICOM stores)
    Codec("JPEG-LS (CharLS)", lambda f: imagecodecs.jpegls_encode(f.view(f.dtype.str.replace("i", "u"))),
          lambda data, like: imagecodecs.jpegls_decode(data).view(like.dtype)),
    Codec("RLE (pylibjpeg-rle)", lambda f: rle_encode(f.tobytes(), **_rle_options(f)), _rle_decode),
    Codec("deflate (zlib 6)", lambda f: imagecodecs.zlib_encode(f.tobytes(), level=6),
          lambda data, like: np.frombuffer(imagecodecs.zlib_decode(data), like.dtype).reshape(like.shape)),
    Codec("zstd (level 3)", lambda f: imagecodecs.zstd_encode(f.tobytes(), level=3),
          lambda data, like: np.frombuffer(imagecodecs.zstd_decode(data), like.dtype).reshape(like.shape)),
]
