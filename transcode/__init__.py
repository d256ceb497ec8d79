"""Verified lossless transcoding of DICOM instances to HTJ2K.

The public API: `transcode_file` and its `TranscodeResult`; `Outcome` and
`Reason` for the stable outcome codes.
"""

__version__ = "0.1.0"

from transcode.policy import Outcome, Reason  # noqa: E402
from transcode.transcoder import TranscodeResult, transcode_file  # noqa: E402

__all__ = ["Outcome", "Reason", "TranscodeResult", "transcode_file", "__version__"]
