"""Phantom images: ellipses of tissue-like values plus sensor noise, so that
compression ratios resemble clinical data rather than random bytes. Used by
`fixtures/` (test files) and `transcode bench` (its default data)."""

from __future__ import annotations

import numpy as np


def phantom(rows: int, columns: int, *, bits: int, signed: bool, seed: int, samples: int = 1) -> np.ndarray:
    """A body-like phantom using `bits` of dynamic range, with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[0:rows, 0:columns]
    cy, cx = (rows - 1) / 2, (columns - 1) / 2
    r2 = ((y - cy) / max(rows * 0.42, 1)) ** 2 + ((x - cx) / max(columns * 0.38, 1)) ** 2
    inner = ((y - cy * 0.9) / max(rows * 0.08, 1)) ** 2 + ((x - cx * 1.2) / max(columns * 0.06, 1)) ** 2
    top = (1 << bits) - 1
    base = np.where(r2 < 1, 0.35, 0.02) + np.where(inner < 1, 0.45, 0.0) + 0.05 * np.cos(x / 17.0) * (r2 < 1)
    img = base * top + rng.normal(0, top * 0.004 + 0.6, (rows, columns))
    if samples > 1:
        img = np.stack([img * (0.6 + 0.2 * s) for s in range(samples)], axis=-1)
    img = np.clip(np.rint(img), 0, top)
    if signed:
        img -= 1 << (bits - 1)
        dtype = np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32
    else:
        dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    return img.astype(dtype)
