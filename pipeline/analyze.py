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
import itertools
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
from pipeline.errors import CorruptMediaError, MissingFileError, TooLargeError
from pipeline.faces import Detection, crop, square_box
from pipeline.media import MediaInfo, iter_frames, load_image, probe
from pipeline.model_access import PipelineModels
from pipeline.result import (
    ClusterResult,
    FaceResult,
    Methods,
    ModelInfo,
    Result,
    ShotResult,
    SourceInfo,
)
from pipeline.sampling import FramePlan, KeyFrame, SampledFace, ShotSamples
from pipeline.segment import Segmentation, Shot, segment_features
from pipeline.settings import AnalysisSettings
from pipeline.shot_scoring import ShotFinisher, finish_shot
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


def _batched(items: Iterator[T], n: int) -> Iterator[list[T]]:
    """``itertools.batched`` (Python 3.12+) for 3.11."""
    while batch := list(itertools.islice(items, n)):
        yield batch


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
        """What the file is (from its bytes); a video over the duration limit is refused."""
        run.report("probing", 0, 0)
        with run.timer("probe"):
            info = probe(path, max_pixels=self.settings.max_pixels)
        if info.kind == "video" and (info.duration_s or 0) > self.settings.download.max_duration_s:
            raise TooLargeError(
                f"video lasts {info.duration_s:.0f} s, over the limit of "
                f"{self.settings.download.max_duration_s:.0f} s"
            )
        return info

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
        """The face's crop at the margin the scoring members need (their largest; the paper's
        1.3 for its five and for MesoNet), which each member narrows to its own."""
        margin = self.models.crop_margin
        box = det.box
        if margin != self.settings.faces.margin:
            box = square_box(det.raw_box, frame.shape[1], frame.shape[0], margin)
        return gallery.thumbnail(crop(frame, box), self.settings.crop_max_side)[0]

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
        clusters = []
        for i, det in enumerate(detections):
            face = FaceResult(
                frame_index=0,
                time_s=0.0,
                box=det.box,
                detection_confidence=round(det.confidence, 6),
                score=float(pred.probability[i]),
                member_scores=pred.member_dict(i),
            )
            clusters.append(ClusterResult(id=i, score=face.score, faces=[face]))
        shot = ShotResult(
            index=0,
            start_s=0.0,
            end_s=0.0,
            score=max_or_none([c.score for c in clusters]),
            sampled_frames=1,
            faces_detected=len(detections),
            clusters=clusters,
        )
        shot.label = self.settings.bands.label(shot.score)
        if self.settings.galleries:
            with run.timer("gallery"):
                gallery.write_image_pictures(
                    run.sink, run.prefix, image, shot, crops, self.settings.gallery_max_side
                )
        run.report("scoring", 1, 1)
        methods = Methods(
            segmentation="none (image)",
            face_detector=self.models.face_detector_name,
            tracking_cues=["none (image: each face is its own track)"],
            aggregation="face -> medium (max)",
            sample_rate_hz=None,
            max_frames_per_shot=1,
        )
        return [shot], 1, methods

    # -- videos ------------------------------------------------------------------------------

    def _video(
        self, path: Path, info: MediaInfo, run: _Run
    ) -> tuple[list[ShotResult], int, Methods]:
        """Paper 3.1 for a video: shots, then per shot faces, tracks, scores and aggregation."""
        fps = info.fps or 25.0
        segmentation, frames_segmented = self._segment(path, info, fps, run)
        plan = FramePlan.for_shots(segmentation.shots, fps, self.settings.faces.max_frames_per_shot)
        cues: list[str] = ["iou", "embedding"] if self.models.has_embedder else ["iou"]
        shots, frames_sampled = self._shots(path, segmentation.shots, plan, run)
        methods = Methods(
            segmentation=segmentation.method,
            face_detector=self.models.face_detector_name,
            tracking_cues=cues,
            sample_rate_hz=self.settings.segmentation.sample_fps,
            max_frames_per_shot=self.settings.faces.max_frames_per_shot,
        )
        return shots, frames_sampled + frames_segmented, methods

    def _segment(
        self, path: Path, info: MediaInfo, fps: float, run: _Run
    ) -> tuple[Segmentation, int]:
        """Pass 1: region descriptors at 1 fps, cut into shots; returns the frames it decoded.

        Runs to the real end of the stream whatever the header says (iter_frames stops there);
        only the descriptors are kept.
        """
        s = self.settings
        rate = s.segmentation.sample_fps
        expected = int((info.duration_s or 0) * rate) + 1
        times: list[float] = []
        features: list[np.ndarray] = []
        last_time = 0.0
        run.report("segmenting", 0, expected)
        with run.timer("segmentation"):
            stream = iter_frames(
                path, (k / rate for k in itertools.count()), max_pixels=s.max_pixels
            )
            for batch in _batched(stream, s.segmentation.batch_size):
                features.extend(self.models.region_features([f.image for f in batch]))
                times.extend(f.time_s for f in batch)
                last_time = batch[-1].time_s
                run.report("segmenting", len(times), max(expected, len(times)))
            if not times:
                raise CorruptMediaError(f"{path.name}: no video frame could be decoded")
            duration = max(info.duration_s or 0.0, last_time + 1.0 / fps)
            segmentation = segment_features(
                times,
                features,
                duration,
                self.models.segmentation_method,
                s.segmentation,
                self.models.segmentation_threshold,
            )
        return segmentation, len(times)

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
            for frame in iter_frames(path, plan.times, max_pixels=s.max_pixels):
                shot_idx = plan.shot_of(frame.time_s)
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
