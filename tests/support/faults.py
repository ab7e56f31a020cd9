"""Stages that fail on purpose, for the tests of what a run does when one video's stage fails.

Ray Data constructs a stage from its class in the actor's process; these classes live in an
importable module (the driver's ``sys.path`` reaches Ray's workers), so a test swaps them in
with ``monkeypatch.setattr("batch.stream.DetectStage", ...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from batch.stages import DetectStage

#: The width of the shared LivePortrait clip's frames (no other test medium has it).
FAILING_WIDTH = 512


class DetectorFailsOnWidth:
    """The stage's real models, except that the face detector fails on any call holding a frame
    ``width`` pixels wide (the whole batch, so the stage retries its shots one by one)."""

    def __init__(self, inner: Any, width: int) -> None:
        self.inner = inner
        self.width = width

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def detect_faces(self, frames: Sequence[np.ndarray]) -> Any:
        if any(f.shape[1] == self.width for f in frames):
            raise RuntimeError(f"detector failed on purpose ({self.width} px wide frames)")
        return self.inner.detect_faces(frames)


class DetectStageFailingOnWidth(DetectStage):
    """The face-detection stage whose detector fails on :data:`FAILING_WIDTH` frames."""

    def __init__(self, config_json: str) -> None:
        super().__init__(config_json)
        self.models = DetectorFailsOnWidth(self.models, FAILING_WIDTH)  # type: ignore[assignment]
