"""Extracting the faces of one dataset row: the job's settings and :class:`ExtractorActor`
(plain Python: Ray Data actors and the in-process loop alike).

Each actor holds one :class:`pipeline.faces.FaceDetector` (the analysis' detector, same settings,
same square 1.3x boxes). Shots and tracks are not needed for training: up to ``max_frames``
frames are spread over the whole video with :func:`pipeline.faces.select_frame_times`, decoded
with :func:`pipeline.media.iter_frames`, and each frame keeps its most confident face
(``keep="best"``, the default) or all of its faces (``keep="all"``). A video's label applies to
every face kept: in a fake with several people only one face may be manipulated, and keeping the
most confident face (the largest, clearest one, usually the subject) limits that label noise.
Images give their faces (frame 0). WildDeepfake rows are face crops already: no detection,
``max_frames`` crops spread over the sequence. A broken video never fails the run: it becomes an
error row naming the ``stage`` it failed at.

Split: the dataset's own split (``VideoRow.split``) where the reader found one
(``split_source="dataset"``). Rows with split ``"unspecified"`` get a video-level split
(``split_source="hash"``): ``"val"`` when the first 8 bytes of ``sha256(video_id)``, read as an
unsigned integer over 2**64, fall below ``val_fraction``, else ``"train"``. It depends on the id
alone, so it is the same on every machine and every rerun, and all frames of a video land on one
side. (Identities are not grouped: an FF++ fake and its source video may fall on different
sides when the official split files are absent.)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from batch.config import DatasetRunConfig, RayRunSettings, StageSettings
from batch.datasets import VideoRow, iter_face_sequence
from batch.execution import error_fields, row_fields, row_from_item, worker_id
from batch.faces_folder import ERROR, FACE, FACE_SCHEMA, NO_FACE, encode_crop
from pipeline.errors import CorruptMediaError, DfdError
from pipeline.faces import FaceSettings
from pipeline.steps import batched
from pipeline.version import __version__

if TYPE_CHECKING:
    from pipeline.faces import Detection, FaceDetector

log = logging.getLogger(__name__)


class FaceExtractionConfig(DatasetRunConfig, RayRunSettings):
    """Everything a face extraction needs; stored in ``faces.json`` (``out``: ``faces.json`` and
    ``parts/``)."""

    #: Frames sampled per video, spread over its whole length; crops per face sequence.
    max_frames: int = Field(32, ge=1)
    #: Fraction of ``"unspecified"``-split videos assigned to ``"val"`` (by hash of video_id).
    val_fraction: float = Field(0.2, ge=0.0, le=1.0)
    #: ``"best"``: the most confident face per frame; ``"all"``: every face found.
    keep: Literal["best", "all"] = "best"
    #: The analysis' detector settings (margin 1.3, thresholds, minimum size).
    faces: FaceSettings = Field(default_factory=FaceSettings)
    #: Crops with a longer side over this are reduced (the analysis' ``crop_max_side``).
    crop_max_side: int = Field(600, ge=32)
    #: Decompression-bomb guard per image or frame, pixels.
    max_pixels: int = Field(100_000_000, gt=0)
    #: Only the first N rows (after the split filter): a smoke test. Not part of the fingerprint.
    limit: int | None = Field(None, ge=1)
    #: The extraction actor pool; each actor loads the detector once. ``num_gpus`` is used when
    #: the detector runs on CUDA (``faces.device``); None: an even share of one GPU among the
    #: actors. Without a share Ray hides the GPU from the actor.
    extractors: StageSettings = Field(default_factory=lambda: StageSettings(actors=2))
    #: A part is written every ``flush_rows`` videos or ``flush_s`` seconds.
    flush_rows: int = Field(32, ge=1)


#: Settings that never change a crop; left out of the fingerprint.
_EXECUTION_ONLY: dict[str, Any] = {
    "out": True,
    "limit": True,
    "retry_errors": True,
    "extractors": True,
    "torch_threads": True,
    "max_task_retries": True,
    "flush_rows": True,
    "flush_s": True,
    "faces": {"device", "batch_size"},
}


def fingerprint(config: FaceExtractionConfig) -> dict[str, Any]:
    """What must not change between the sessions of one faces folder."""
    settings = config.model_dump(mode="json", exclude=_EXECUTION_ONLY)
    settings["root"] = str(Path(config.root).expanduser().resolve())
    return settings


def assign_split(video_id: str, split: str, val_fraction: float) -> tuple[str, str]:
    """``(split, split_source)``: the dataset's split, or a hash split of ``video_id``."""
    if split != "unspecified":
        return split, "dataset"
    h = int.from_bytes(hashlib.sha256(video_id.encode()).digest()[:8], "big") / 2**64
    return ("val" if h < val_fraction else "train"), "hash"


class _Failure(Exception):
    """Carries the stage a video failed at."""

    def __init__(self, stage: str, cause: Exception) -> None:
        super().__init__(str(cause))
        self.stage = stage
        self.cause = cause


class ExtractorActor:
    """Loads the face detector once, then extracts the faces of every row it is given.

    Plain Python: ``map_batches(ExtractorActor, compute=ActorPoolStrategy(...))`` builds one per
    actor, and ``--local`` builds one in the driver and calls it the same way.
    """

    def __init__(self, config_json: str) -> None:
        import torch

        from pipeline.faces import FaceDetector

        self.config = FaceExtractionConfig.model_validate_json(config_json)
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        self.detector: FaceDetector = FaceDetector(self.config.faces)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Rows (columns of :class:`VideoRow` + ``dataset``) -> face rows (:data:`FACE_SCHEMA`)."""
        records: list[dict[str, Any]] = []
        for item in batch.to_pylist():
            row = row_from_item(item)
            records.extend(self.extract(row, item["dataset"]))
        return pa.Table.from_pylist(records, schema=FACE_SCHEMA)

    def extract(self, row: VideoRow, dataset: str) -> list[dict[str, Any]]:
        """Rows for one video: its faces, or one ``no_face`` row, or one ``error`` row.

        Never raises for a bad video.
        """
        split, source = assign_split(row.video_id, row.split, self.config.val_fraction)
        base = {
            **row_fields(row, dataset),
            "split": split,
            "split_source": source,
            "service_version": __version__,
            "worker": worker_id(),
        }
        try:
            if row.kind == "face_sequence":
                faces = self._sequence(row)
            else:
                faces = self._media(Path(row.path))
            records = [{**f, "status": FACE} for f in faces] or [{"status": NO_FACE}]
        except _Failure as failure:
            exc = failure.cause
            if not isinstance(exc, DfdError):  # a bug or a library failure: record it, go on
                log.error("extracting %s failed at %s", row.video_id, failure.stage, exc_info=exc)
            records = [{"status": ERROR, **error_fields(exc), "stage": failure.stage}]
        now = datetime.now(UTC)
        return [{**base, **r, "finished_at": now} for r in records]

    def _sequence(self, row: VideoRow) -> list[dict[str, Any]]:
        """WildDeepfake: the images are the faces; ``max_frames`` of them, spread evenly."""
        from pipeline.sampling import spread as _spread

        stage = "read"
        try:
            crops = list(iter_face_sequence(row))
            picked = _spread(len(crops), self.config.max_frames)
            stage = "encode"
            return [self._face(i, None, crops[i], None, crops[i].shape) for i in picked]
        except Exception as exc:
            raise _Failure(stage, exc) from exc

    def _media(self, path: Path) -> list[dict[str, Any]]:
        """A video (frames spread over its length) or an image (frame 0)."""
        from pipeline.faces import select_frame_times
        from pipeline.media import iter_frames, load_image, probe

        c = self.config
        stage = "probe"
        try:
            info = probe(path, max_pixels=c.max_pixels)
            stage = "decode"
            if info.kind == "image":
                frames: Iterator[tuple[int, float | None, np.ndarray]] = iter(
                    [(0, 0.0, load_image(path, max_pixels=c.max_pixels))]
                )
            else:
                fps = info.fps or 25.0
                duration = info.duration_s or 1.0 / fps  # unknown length: the first frame
                times = select_frame_times(0.0, duration, fps, c.max_frames) or [0.0]
                frames = (
                    (f.index, f.time_s, f.image)
                    for f in iter_frames(path, times, max_pixels=c.max_pixels)
                )
            faces: list[dict[str, Any]] = []
            decoded = 0
            for batch in batched(frames, c.faces.batch_size):
                decoded += len(batch)
                stage = "detect"
                found = self.detector.detect([image for _, _, image in batch])
                stage = "encode"
                for (index, t, image), dets in zip(batch, found, strict=True):
                    for det in dets if c.keep == "all" else dets[:1]:
                        faces.append(self._face(index, t, image, det, image.shape))
                stage = "decode"
            if not decoded:
                raise CorruptMediaError(f"{path.name}: no video frame could be decoded")
            return faces
        except Exception as exc:
            raise _Failure(stage, exc) from exc

    def _face(
        self,
        index: int,
        time_s: float | None,
        image: np.ndarray,
        det: Detection | None,
        frame_shape: tuple[int, ...],
    ) -> dict[str, Any]:
        """One face row; ``det=None``: ``image`` is the crop already (face sequences)."""
        from pipeline.faces import crop
        from pipeline.gallery import thumbnail

        face = image if det is None else crop(image, det)
        face, scale = thumbnail(face, self.config.crop_max_side)
        record: dict[str, Any] = {
            "frame_index": index,
            "time_s": time_s,
            "crop_png": encode_crop(np.ascontiguousarray(face)),
            "width": int(face.shape[1]),
            "height": int(face.shape[0]),
            "frame_width": int(frame_shape[1]),
            "frame_height": int(frame_shape[0]),
        }
        if det is not None:
            origin = np.array(det.box[:2], dtype=np.float32)
            landmarks = (det.landmarks - origin) * np.float32(scale)
            record.update(
                box=list(det.box),
                raw_box=list(det.raw_box),
                landmarks=landmarks.reshape(-1).tolist(),
                detection_confidence=round(det.confidence, 6),
            )
        return record
