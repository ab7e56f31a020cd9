"""One analysis, in-process: source -> download -> shots -> faces -> tracks -> scores -> Result.

Paper section 3.1 end to end. The models are reached through
:class:`~pipeline.model_access.PipelineModels`
so that the CLI (local models) and the Serve application (deployment handles) share this code.

An image gets face detection and scoring only. A video is decoded twice, lazily: pass 1 at
1 fps for shot boundaries (:mod:`pipeline.segment`), keeping only region descriptors; pass 2 at
each shot's sampled frames (:mod:`pipeline.sampling`), keeping thumbnails and face crops. A shot
is finished (tracks, scores, pictures: :mod:`pipeline.shot_scoring`) and its state released as
soon as its last frame is in, so nothing scales with the video's length except the list of shot
results. The knobs are :class:`~pipeline.settings.AnalysisSettings`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from pipeline import gallery
from pipeline.aggregate import argmax_or_none, max_or_none
from pipeline.artefacts import ArtefactSink
from pipeline.download import fetch
from pipeline.errors import MissingFileError
from pipeline.faces import Detection
from pipeline.media import MediaInfo, load_image
from pipeline.model_access import PipelineModels
from pipeline.result import (
    Methods,
    ModelInfo,
    Result,
    ShotResult,
    SourceInfo,
)
from pipeline.sampling import FramePlan, KeyFrame, SampledFace, ShotSamples
from pipeline.segment import Segmentation, Shot
from pipeline.settings import AnalysisSettings
from pipeline.shot_scoring import ShotFinisher, finish_shot, image_shot
from pipeline.steps import (
    cut_face,
    image_methods,
    plan_frames,
    planned_frames,
    probe_media,
    segment_video,
    video_methods,
)
from pipeline.version import __version__

__all__ = ["STAGES", "AnalysisSettings", "Analyzer", "ProgressFn", "is_url", "load_analyzer"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ``progress(stage, done, total)``; ``total`` is 0 when unknown.
ProgressFn = Callable[[str, int, int], None]

STAGES = ("downloading", "probing", "segmenting", "detecting faces", "scoring", "done")


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


@dataclass(frozen=True)
class _Run:
    """Where one analysis reports to and writes to."""

    sink: ArtefactSink
    report: ProgressFn
    timer: _Timer
    prefix: str


def is_url(source: str) -> bool:
    return "://" in source[:16]


class Analyzer:
    """Runs analyses with one set of loaded models; reusable and safe to call repeatedly."""

    def __init__(self, models: PipelineModels, settings: AnalysisSettings | None = None) -> None:
        self.models = models
        self.settings = settings or AnalysisSettings()

    # -- entry points ------------------------------------------------------------------------

    def analyze(
        self,
        source: str | Path,
        sink: ArtefactSink,
        *,
        progress: ProgressFn | None = None,
        allow_local_paths: bool = True,
        prefix: str = "",
    ) -> Result:
        """Analyse a URL (downloaded first) or, when allowed, a local file."""
        run = _Run(sink, progress or (lambda stage, done, total: None), _Timer(), prefix)
        src = str(source)
        if is_url(src) or not allow_local_paths:
            run.report("downloading", 0, 0)
            with tempfile.TemporaryDirectory(prefix="dfd-dl-") as tmp:
                with run.timer("download"):
                    downloaded = fetch(src, Path(tmp), self.settings.download)
                return self._analyze_path(downloaded.path, run, url=src)
        path = Path(src)
        if not path.exists():
            raise MissingFileError(f"{path} does not exist")
        return self._analyze_path(path, run, url=None)

    def analyze_file(
        self,
        path: Path,
        sink: ArtefactSink,
        *,
        url: str | None = None,
        progress: ProgressFn | None = None,
        prefix: str = "",
    ) -> Result:
        """Analyse a file already on disk (an upload, a dataset video); ``url`` is recorded."""
        if not Path(path).exists():
            raise MissingFileError(f"{path} does not exist")
        run = _Run(sink, progress or (lambda s, d, t: None), _Timer(), prefix)
        return self._analyze_path(Path(path), run, url=url)

    # -- one medium: probe, its shots, the result --------------------------------------------

    def _analyze_path(self, path: Path, run: _Run, url: str | None) -> Result:
        info = self._probe(path, run)
        if info.kind == "image":
            shots, frames_sampled, methods = self._image(path, run)
        else:
            shots, frames_sampled, methods = self._video(path, info, run)
        return self._result(path, url, info, shots, frames_sampled, methods, run)

    def _probe(self, path: Path, run: _Run) -> MediaInfo:
        run.report("probing", 0, 0)
        with run.timer("probe"):
            return probe_media(path, self.settings)

    def _result(
        self,
        path: Path,
        url: str | None,
        info: MediaInfo,
        shots: list[ShotResult],
        frames_sampled: int,
        methods: Methods,
        run: _Run,
    ) -> Result:
        """Paper 3.1: the medium's score is the max over its shots."""
        shot_scores = [s.score for s in shots]
        score = max_or_none(shot_scores)
        warnings = list(self.models.warnings())
        faces_total = sum(len(c.faces) for s in shots for c in s.clusters)
        if score is None:
            warnings.append("no face was found: the medium gets no DeepFake score")
        run.report("done", 1, 1)
        return Result(
            service_version=__version__,
            source=_source_info(info, path, url, frames_sampled),
            score=score,
            label=self.settings.bands.label(score),
            bands=self.settings.bands,
            top_shot=argmax_or_none(shot_scores),
            shots=shots,
            faces_total=faces_total,
            models=_model_infos(self.models),
            ensemble=self.models.ensemble_name,
            methods=methods,
            timings={k: round(v, 4) for k, v in run.timer.seconds.items()},
            warnings=warnings,
        )

    def _crop(self, frame: np.ndarray, det: Detection) -> np.ndarray:
        return cut_face(frame, det, self.models.crop_margin, self.settings)

    # -- images ------------------------------------------------------------------------------

    def _image(self, path: Path, run: _Run) -> tuple[list[ShotResult], int, Methods]:
        """Paper 3.1: an image gets face detection and inference only; score = max over faces."""
        image = load_image(path, max_pixels=self.settings.max_pixels)
        run.report("detecting faces", 0, 1)
        with run.timer("faces"):
            detections = self.models.detect_faces([image])[0]
            crops = [self._crop(image, d) for d in detections]
        run.report("detecting faces", 1, 1)
        run.report("scoring", 0, 1)
        with run.timer("scoring"):
            pred = self.models.score_faces(crops)
        shot = image_shot(detections, pred, self.settings)
        if self.settings.galleries:
            with run.timer("gallery"):
                gallery.write_image_pictures(
                    run.sink, run.prefix, image, shot, crops, self.settings.gallery_max_side
                )
        run.report("scoring", 1, 1)
        methods = image_methods(self.models)
        return [shot], 1, methods

    # -- videos ------------------------------------------------------------------------------

    def _video(
        self, path: Path, info: MediaInfo, run: _Run
    ) -> tuple[list[ShotResult], int, Methods]:
        """Paper 3.1 for a video: shots, then per shot faces, tracks, scores and aggregation."""
        segmentation, frames_segmented = self._segment(path, info, run)
        plan = plan_frames(segmentation, info, self.settings)
        shots, frames_sampled = self._shots(path, segmentation.shots, plan, run)
        methods = video_methods(self.models, self.settings, segmentation.method)
        return shots, frames_sampled + frames_segmented, methods

    def _segment(self, path: Path, info: MediaInfo, run: _Run) -> tuple[Segmentation, int]:
        """Pass 1 (:func:`pipeline.steps.segment_video`), timed and reported."""
        with run.timer("segmentation"):
            return segment_video(
                self.models,
                self.settings,
                path,
                info,
                lambda done, total: run.report("segmenting", done, total),
            )

    def _shots(
        self, path: Path, shots: list[Shot], plan: FramePlan, run: _Run
    ) -> tuple[list[ShotResult], int]:
        """Pass 2: decode the planned frames (paper 3.1: at most 64 unique ones per shot),
        detect faces on them in batches, and finish each shot once its last frame is in.

        Returns the shots' results in time order and the number of frames decoded.
        """
        s = self.settings
        samples = {shot.index: ShotSamples(shot) for shot in shots}
        pending: list[tuple[int, int, float, np.ndarray]] = []  # (shot, index, time, image)
        frames_sampled = 0
        run.report("detecting faces", 0, len(plan))
        current = shots[0].index
        finish = functools.partial(
            finish_shot, self.models, s, sink=run.sink, prefix=run.prefix, timer=run.timer
        )
        with ShotFinisher(finish, samples, s.shot_workers, run.report) as finisher:
            for shot_idx, frame in planned_frames(path, plan, s):
                if shot_idx != current:
                    self._detect_faces(pending, samples, run)
                    for idx in range(current, shot_idx):
                        finisher.finish(idx)
                    current = shot_idx
                pending.append((shot_idx, frame.index, frame.time_s, frame.image))
                frames_sampled += 1
                if len(pending) >= s.faces.batch_size:
                    self._detect_faces(pending, samples, run)
                run.report("detecting faces", frames_sampled, len(plan))
            self._detect_faces(pending, samples, run)
            results = finisher.finish_all()
        return [results[shot.index] for shot in shots], frames_sampled

    def _detect_faces(
        self,
        pending: list[tuple[int, int, float, np.ndarray]],
        samples: dict[int, ShotSamples],
        run: _Run,
    ) -> None:
        """Faces on a batch of decoded frames; each frame's thumbnail and crops go to its shot."""
        if not pending:
            return
        with run.timer("faces"):
            dets = self.models.detect_faces([p[3] for p in pending])
            for (shot_idx, index, t, img), frame_dets in zip(pending, dets, strict=True):
                shot = samples[shot_idx]
                pos = len(shot.frames)
                thumb, scale = gallery.thumbnail(img, self.settings.gallery_max_side)
                shot.frames.append(KeyFrame(index, t, thumb, scale))
                for d in frame_dets:
                    shot.faces.append(SampledFace(pos, index, t, d, self._crop(img, d)))
        pending.clear()


def _source_info(info: MediaInfo, path: Path, url: str | None, frames_sampled: int) -> SourceInfo:
    return SourceInfo(
        url=url,
        path=None if url is not None else str(path),
        sha256=info.sha256,
        media_type=info.kind,
        format=info.format,
        size_bytes=info.size_bytes,
        width=info.width,
        height=info.height,
        fps=info.fps,
        duration_s=info.duration_s,
        frame_count=info.frame_count,
        frames_sampled=frames_sampled,
    )


def _model_infos(models: PipelineModels) -> list[ModelInfo]:
    return [
        ModelInfo(
            name=m.name,
            version=m.version,
            weights=m.weights,
            sha256=m.sha256,
            backend=m.backend,
            trained_on=m.trained_on,
            architecture=m.architecture,
            licence=m.licence,
            source=m.source,
            description=m.description,
            weight=m.weight,
        )
        for m in models.model_infos()
    ]


def load_analyzer(settings: AnalysisSettings | None = None) -> Analyzer:
    """An :class:`Analyzer` with every model loaded in this process."""
    from pipeline.model_access import LocalModels

    settings = settings or AnalysisSettings()
    models = LocalModels.load(
        settings.inference, settings.faces, settings.segmentation, settings.embedder_weights
    )
    return Analyzer(models, settings)
