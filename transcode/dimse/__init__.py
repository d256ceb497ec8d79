"""DIMSE doors to the ingest service: the C-STORE receiver (`transcode listen`), migration, forwarding."""
