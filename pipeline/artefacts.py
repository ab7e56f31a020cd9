"""Where the pipeline writes pictures: a one-method interface.

``serve.storage.LocalStorage`` (a local folder) and ``serve.storage.S3Storage`` (MinIO, as in
paper 3.3) implement it; the pipeline never knows which.
"""

from __future__ import annotations

from typing import Protocol


class ArtefactSink(Protocol):
    def put_bytes(self, key: str, data: bytes, content_type: str = ...) -> None:
        """Store ``data`` under ``key`` (a relative, ``/``-separated path)."""
        ...


class MemorySink:
    """Keeps artefacts in a dict: for callers that want the bytes, and for tests."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[bytes, str]] = {}

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self.items[key] = (data, content_type)
