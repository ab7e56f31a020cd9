"""One analysis, in-process: source -> download -> shots -> faces -> tracks -> scores -> Result.

Paper section 3.1 end to end. The models are reached through
:class:`~pipeline.stages.PipelineModels`
so that the CLI (local models) and the Serve application (deployment handles) share this code.

Memory stays bounded by design: the video is decoded twice, lazily (once at 1 fps for shot
boundaries, keeping only region descriptors; once at the shots' sampled frames), and a shot's
state (face crops, small thumbnails) is released as soon as the shot is scored. Nothing scales
with the video's length except the list of shot results.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dfd.version import __version__
from pipeline import gallery
from pipeline.aggregate import argmax_or_none, max_or_none, track_score
from pipeline.artefacts import ArtefactSink
from pipeline.cluster import TrackFace, build_tracks
from pipeline.download import DownloadSettings, fetch
from pipeline.errors import CorruptMediaError, MissingFileError, TooLargeError
from pipeline.faces import Detection, FaceSettings, crop, select_frame_times, square_box
from pipeline.media import DEFAULT_MAX_PIXELS, MediaInfo, iter_frames, load_image, probe
from pipeline.memory import release_free_memory
from pipeline.models import InferenceSettings
from pipeline.result import (
    ClusterResult,
    FaceResult,
    Methods,
    ModelInfo,
    Result,
    ScoreBands,
    ShotResult,
    SourceInfo,
)
from pipeline.segment import SegmentSettings, Shot, segment_features
from pipeline.stages import PipelineModels

log = logging.getLogger(__name__)
T = TypeVar("T")

#: ``progress(stage, done, total)``; ``total`` is 0 when unknown.
ProgressFn = Callable[[str, int, int], None]

STAGES = ("downloading", "probing", "segmenting", "detecting faces", "scoring", "done")


class AnalysisSettings(BaseModel):
    """Every knob of one analysis, with the paper's numbers as defaults."""

    model_config = ConfigDict(extra="forbid")

    download: DownloadSettings = DownloadSettings()
    segmentation: SegmentSettings = SegmentSettings()
    faces: FaceSettings = FaceSettings()
    inference: InferenceSettings = InferenceSettings()
    #: InceptionResnetV1 (VGGFace2) state dict; default ``<model dir>/aux/``.
    embedder_weights: Path | None = None
    #: Paper 3.1: edges where embedding similarity > 0.8.
    sim_threshold: float = Field(0.8, ge=-1.0, le=1.0)
    iou_threshold: float = Field(0.5, gt=0.0, le=1.0)
    #: Paper 3.1: drop tracks with fewer faces than 20% of the shot's sampled frames.
    min_track_fraction: float = Field(0.2, ge=0.0, le=1.0)
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0)
    galleries: bool = True
    #: Longer side of keyframe thumbnails kept per sampled frame (UI hover-zoom needs detail).
    gallery_max_side: int = Field(640, ge=64)
    #: Keyframes per shot gallery and crops per track collage.
    gallery_max_tiles: int = Field(16, ge=1)
    collage_max_tiles: int = Field(36, ge=1)
    #: Face crops larger than this are reduced when extracted (they are resized to the models'
    #: 300 px anyway; this bounds a shot's memory for close-ups in 4K video).
    crop_max_side: int = Field(600, ge=32)
    bands: ScoreBands = ScoreBands()
    #: Shots scored concurrently (useful when models are remote, as in Serve).
    shot_workers: int = Field(1, ge=1)


@dataclass
class _Face:
    frame_pos: int
    frame_index: int
    time_s: float
    detection: Detection
    crop: np.ndarray


@dataclass
class _ShotState:
    shot: Shot
    frames: list[tuple[int, float, np.ndarray, float]] = field(default_factory=list)
    faces: list[_Face] = field(default_factory=list)


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


def is_url(source: str) -> bool:
    return "://" in source[:16]


def _shrink(img: np.ndarray, max_side: int) -> np.ndarray:
    return gallery.thumbnail(img, max_side)[0]


def _batched(items: Iterator[T], n: int) -> Iterator[list[T]]:
    """``itertools.batched`` (Python 3.12+) for 3.11."""
    while batch := list(itertools.islice(items, n)):
        yield batch


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({round(v) for v in np.linspace(0, n - 1, k)})


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
        timer = _Timer()
        report = progress or (lambda stage, done, total: None)
        src = str(source)
        if is_url(src) or not allow_local_paths:
            report("downloading", 0, 0)
            with tempfile.TemporaryDirectory(prefix="dfd-dl-") as tmp:
                with timer("download"):
                    downloaded = fetch(src, Path(tmp), self.settings.download)
                return self._analyze_path(downloaded.path, sink, report, timer, prefix, url=src)
        path = Path(src)
        if not path.exists():
            raise MissingFileError(f"{path} does not exist")
        return self._analyze_path(path, sink, report, timer, prefix, url=None)

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
        return self._analyze_path(
            Path(path), sink, progress or (lambda s, d, t: None), _Timer(), prefix, url=url
        )

    # -- shared ------------------------------------------------------------------------------

    def _analyze_path(
        self,
        path: Path,
        sink: ArtefactSink,
        report: ProgressFn,
        timer: _Timer,
        prefix: str,
        url: str | None,
    ) -> Result:
        report("probing", 0, 0)
        with timer("probe"):
            info = probe(path, max_pixels=self.settings.max_pixels)
        if info.kind == "video" and (info.duration_s or 0) > self.settings.download.max_duration_s:
            raise TooLargeError(
                f"video lasts {info.duration_s:.0f} s, over the limit of "
                f"{self.settings.download.max_duration_s:.0f} s"
            )
        if info.kind == "image":
            shots, frames_sampled = self._image(path, info, sink, report, timer, prefix)
            methods = Methods(
                segmentation="none (image)",
                face_detector=self.models.face_detector_name,
                tracking_cues=["none (image: each face is its own track)"],
                aggregation="face -> medium (max)",
                sample_rate_hz=None,
                max_frames_per_shot=1,
            )
        else:
            shots, frames_sampled, cues, seg_method = self._video(
                path, info, sink, report, timer, prefix
            )
            methods = Methods(
                segmentation=seg_method,
                face_detector=self.models.face_detector_name,
                tracking_cues=cues,
                sample_rate_hz=self.settings.segmentation.sample_fps,
                max_frames_per_shot=self.settings.faces.max_frames_per_shot,
            )
        shot_scores = [s.score for s in shots]
        score = max_or_none(shot_scores)
        warnings = list(self.models.warnings())
        faces_total = sum(len(c.faces) for s in shots for c in s.clusters)
        if score is None:
            warnings.append("no face was found: the medium gets no DeepFake score")
        report("done", 1, 1)
        return Result(
            service_version=__version__,
            source=SourceInfo(
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
            ),
            score=score,
            label=self.settings.bands.label(score),
            bands=self.settings.bands,
            top_shot=argmax_or_none(shot_scores),
            shots=shots,
            faces_total=faces_total,
            models=[
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
                for m in self.models.model_infos()
            ],
            ensemble=self.models.ensemble_name,
            methods=methods,
            timings={k: round(v, 4) for k, v in timer.seconds.items()},
            warnings=warnings,
        )

    def _crop(self, frame: np.ndarray, det: Detection) -> np.ndarray:
        """The face's crop at the margin the scoring members need (their largest; the paper's
        1.3 for its five and for MesoNet), which each member narrows to its own."""
        margin = self.models.crop_margin
        box = det.box
        if margin != self.settings.faces.margin:
            box = square_box(det.raw_box, frame.shape[1], frame.shape[0], margin)
        return _shrink(crop(frame, box), self.settings.crop_max_side)

    # -- images ------------------------------------------------------------------------------

    def _image(
        self,
        path: Path,
        info: MediaInfo,
        sink: ArtefactSink,
        report: ProgressFn,
        timer: _Timer,
        prefix: str,
    ) -> tuple[list[ShotResult], int]:
        """Paper 3.1: an image gets face detection and inference only; score = max over faces."""
        image = load_image(path, max_pixels=self.settings.max_pixels)
        report("detecting faces", 0, 1)
        with timer("faces"):
            detections = self.models.detect_faces([image])[0]
            crops = [self._crop(image, d) for d in detections]
        report("detecting faces", 1, 1)
        report("scoring", 0, 1)
        with timer("scoring"):
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
            with timer("gallery"):
                self._image_artefacts(image, shot, crops, sink, prefix)
        report("scoring", 1, 1)
        return [shot], 1

    def _image_artefacts(
        self,
        image: np.ndarray,
        shot: ShotResult,
        crops: Sequence[np.ndarray],
        sink: ArtefactSink,
        prefix: str,
    ) -> None:
        view, scale = gallery.thumbnail(image, max(self.settings.gallery_max_side, 1280))
        shot.thumbnail = f"{prefix}image.jpg"
        sink.put_bytes(shot.thumbnail, gallery.encode_jpeg(view), "image/jpeg")
        boxed = [gallery.BoxedFace(c.faces[0].box, c.score) for c in shot.clusters]
        shot.gallery = f"{prefix}image_boxes.jpg"
        sink.put_bytes(
            shot.gallery, gallery.encode_jpeg(gallery.draw_faces(view, boxed, scale)), "image/jpeg"
        )
        for cluster, face_crop in zip(shot.clusters, crops, strict=True):
            cluster.collage = f"{prefix}faces/{cluster.id:03d}.jpg"
            sink.put_bytes(cluster.collage, gallery.encode_jpeg(face_crop), "image/jpeg")
            cluster.keyframe = shot.gallery
            cluster.keyframe_time_s = 0.0

    # -- videos ------------------------------------------------------------------------------

    def _video(
        self,
        path: Path,
        info: MediaInfo,
        sink: ArtefactSink,
        report: ProgressFn,
        timer: _Timer,
        prefix: str,
    ) -> tuple[list[ShotResult], int, list[str], str]:
        s = self.settings
        fps = info.fps or 25.0
        # Pass 1: region descriptors at 1 fps, to the real end of the stream whatever the
        # header says (iter_frames stops there); only descriptors are kept.
        rate = s.segmentation.sample_fps
        expected = int((info.duration_s or 0) * rate) + 1
        times: list[float] = []
        features: list[np.ndarray] = []
        last_time = 0.0
        report("segmenting", 0, expected)
        with timer("segmentation"):
            stream = iter_frames(
                path, (k / rate for k in itertools.count()), max_pixels=s.max_pixels
            )
            for batch in _batched(stream, s.segmentation.batch_size):
                features.extend(self.models.region_features([f.image for f in batch]))
                times.extend(f.time_s for f in batch)
                last_time = batch[-1].time_s
                report("segmenting", len(times), max(expected, len(times)))
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
        del features
        shots = segmentation.shots
        # Pass 2: at most 64 unique frames per shot, spread over it (paper 3.1).
        plan: list[tuple[float, int]] = []
        for shot in shots:
            picked = select_frame_times(shot.start_s, shot.end_s, fps, s.faces.max_frames_per_shot)
            plan.extend((t, shot.index) for t in (picked or [shot.start_s]))
        plan_times = [t for t, _ in plan]
        states = {shot.index: _ShotState(shot) for shot in shots}
        results: dict[int, ShotResult] = {}
        cues: list[str] = ["iou", "embedding"] if self.models.has_embedder else ["iou"]
        pending: list[tuple[int, int, float, np.ndarray]] = []
        futures: dict[int, Future[ShotResult]] = {}
        executor = ThreadPoolExecutor(s.shot_workers) if s.shot_workers > 1 else None
        frames_sampled = 0
        done_shots = 0

        def flush() -> None:
            if not pending:
                return
            with timer("faces"):
                dets = self.models.detect_faces([p[3] for p in pending])
                for (shot_idx, index, t, img), frame_dets in zip(pending, dets, strict=True):
                    state = states[shot_idx]
                    pos = len(state.frames)
                    thumb, scale = gallery.thumbnail(img, s.gallery_max_side)
                    state.frames.append((index, t, thumb, scale))
                    for d in frame_dets:
                        state.faces.append(_Face(pos, index, t, d, self._crop(img, d)))
            pending.clear()

        def finish(shot_idx: int) -> None:
            nonlocal done_shots
            state = states.pop(shot_idx)
            if executor is None:
                results[shot_idx] = self._finish_shot(state, sink, prefix, timer)
                del state
                release_free_memory()  # a long video must not need more RAM than a short one
                done_shots += 1
                report("scoring", done_shots, len(shots))
                return
            futures[shot_idx] = executor.submit(self._finish_shot, state, sink, prefix, timer)
            # Bound memory: never more shots in flight than workers (plus the one decoding).
            while sum(not f.done() for f in futures.values()) > s.shot_workers:
                next(f for f in futures.values() if not f.done()).result()

        report("detecting faces", 0, len(plan))
        current = shots[0].index
        try:
            for frame in iter_frames(path, plan_times, max_pixels=s.max_pixels):
                # The planned time nearest to this frame says which shot it serves.
                k = bisect.bisect_left(plan_times, frame.time_s)
                if k > 0 and (
                    k == len(plan_times)
                    or frame.time_s - plan_times[k - 1] <= plan_times[k] - frame.time_s
                ):
                    k -= 1
                shot_idx = plan[k][1]
                if shot_idx != current:
                    flush()
                    for idx in range(current, shot_idx):
                        if idx in states:
                            finish(idx)
                    current = shot_idx
                pending.append((shot_idx, frame.index, frame.time_s, frame.image))
                frames_sampled += 1
                if len(pending) >= s.faces.batch_size:
                    flush()
                report("detecting faces", frames_sampled, len(plan))
            flush()
            for idx in sorted(states):
                finish(idx)
            for idx, fut in futures.items():
                results[idx] = fut.result()
        finally:
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
        ordered = [results[shot.index] for shot in shots]
        return ordered, frames_sampled + len(times), cues, segmentation.method

    def _finish_shot(
        self, state: _ShotState, sink: ArtefactSink, prefix: str, timer: _Timer
    ) -> ShotResult:
        """Tracks, scores, aggregation and pictures for one shot; releases its crops."""
        s = self.settings
        shot, faces = state.shot, state.faces
        n_frames = len(state.frames)
        result = ShotResult(
            index=shot.index,
            start_s=round(shot.start_s, 4),
            end_s=round(shot.end_s, 4),
            sampled_frames=n_frames,
            faces_detected=len(faces),
            clusters=[],
        )
        if faces:
            with timer("tracks"):
                embeddings = (
                    self.models.embed_faces([f.crop for f in faces])
                    if self.models.has_embedder
                    else None
                )
                tracks = build_tracks(
                    [TrackFace(f.frame_pos, f.detection.box) for f in faces],
                    max(n_frames, 1),
                    embeddings,
                    sim_threshold=s.sim_threshold,
                    iou_threshold=s.iou_threshold,
                    min_fraction=s.min_track_fraction,
                )
            kept = [i for cluster in tracks.clusters for i in cluster]
            with timer("scoring"):
                pred = self.models.score_faces([faces[i].crop for i in kept])
            score_of = {i: float(pred.probability[j]) for j, i in enumerate(kept)}
            members_of = {i: pred.member_dict(j) for j, i in enumerate(kept)}
            for cid, cluster in enumerate(tracks.clusters):
                face_results = [
                    FaceResult(
                        frame_index=faces[i].frame_index,
                        time_s=round(faces[i].time_s, 4),
                        box=faces[i].detection.box,
                        detection_confidence=round(faces[i].detection.confidence, 6),
                        score=score_of[i],
                        member_scores=members_of[i],
                    )
                    for i in cluster
                ]
                result.clusters.append(
                    ClusterResult(
                        id=cid,
                        score=track_score([f.score for f in face_results]),
                        faces=face_results,
                    )
                )
            result.dropped_clusters = len(tracks.dropped)
            result.score = max_or_none([c.score for c in result.clusters])
            if s.galleries:
                with timer("gallery"):
                    self._shot_artefacts(state, tracks.clusters, result, score_of, sink, prefix)
        result.label = s.bands.label(result.score)
        if s.galleries and result.gallery is None and state.frames:
            with timer("gallery"):
                self._shot_artefacts(state, [], result, {}, sink, prefix)
        return result

    def _shot_artefacts(
        self,
        state: _ShotState,
        clusters: list[list[int]],
        result: ShotResult,
        score_of: dict[int, float],
        sink: ArtefactSink,
        prefix: str,
    ) -> None:
        s = self.settings
        base = f"{prefix}shots/{result.index:04d}"
        kept_by_frame: dict[int, list[gallery.BoxedFace]] = {}
        for cluster in clusters:
            for i in cluster:
                f = state.faces[i]
                kept_by_frame.setdefault(f.frame_pos, []).append(
                    gallery.BoxedFace(f.detection.box, score_of[i])
                )
        positions = _spread(len(state.frames), s.gallery_max_tiles)
        tiles = [
            (state.frames[p][2], kept_by_frame.get(p, []), state.frames[p][3]) for p in positions
        ]
        result.gallery = f"{base}/gallery.jpg"
        sink.put_bytes(result.gallery, gallery.shot_gallery(tiles), "image/jpeg")
        middle = state.frames[len(state.frames) // 2]
        result.thumbnail = f"{base}/thumbnail.jpg"
        sink.put_bytes(result.thumbnail, gallery.encode_jpeg(middle[2]), "image/jpeg")
        for cid, (cluster, cres) in enumerate(zip(clusters, result.clusters, strict=True)):
            picks = [cluster[p] for p in _spread(len(cluster), s.collage_max_tiles)]
            cres.collage = f"{base}/track{cid:02d}_collage.jpg"
            sink.put_bytes(
                cres.collage,
                gallery.track_collage(
                    [state.faces[i].crop for i in picks], [score_of[i] for i in picks]
                ),
                "image/jpeg",
            )
            best = max(cluster, key=lambda i: state.faces[i].detection.confidence)
            face = state.faces[best]
            _, _, thumb, scale = state.frames[face.frame_pos]
            cres.keyframe = f"{base}/track{cid:02d}_keyframe.jpg"
            cres.keyframe_time_s = round(face.time_s, 4)
            image = gallery.draw_faces(
                thumb, [gallery.BoxedFace(face.detection.box, score_of[best])], scale
            )
            sink.put_bytes(cres.keyframe, gallery.encode_jpeg(image), "image/jpeg")


def load_analyzer(settings: AnalysisSettings | None = None) -> Analyzer:
    """An :class:`Analyzer` with every model loaded in this process."""
    from pipeline.stages import LocalModels

    settings = settings or AnalysisSettings()
    models = LocalModels.load(
        settings.inference, settings.faces, settings.segmentation, settings.embedder_weights
    )
    return Analyzer(models, settings)
