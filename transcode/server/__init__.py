"""DICOMweb server over an archive (FastAPI): `create_app(archive)`."""

from transcode.server.app import create_app

__all__ = ["create_app"]
