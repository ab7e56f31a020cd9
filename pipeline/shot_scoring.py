"""One shot of a video, once pass 2 has found its faces: tracks, scores, aggregation, pictures.

Paper section 3.1: the faces of a shot are linked into tracks (box overlap between sampled
frames, and embedding similarity where an embedder is installed); tracks with fewer faces than
20% of the shot's sampled frames are dropped; each kept face is scored by the ensemble, a
track's score is the mean of its faces' and the shot's the max over its tracks.

:class:`ShotFinisher` runs :func:`finish_shot` for each shot as soon as pass 2 has decoded its
last frame, in the decoding thread or on worker threads, so that only a few shots' crops are
ever held at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager

import numpy as np

from pipeline import gallery
from pipeline.aggregate import max_or_none, track_score
from pipeline.artefacts import ArtefactSink
from pipeline.faces import Detection
from pipeline.memory import release_free_memory
from pipeline.model_access import PipelineModels
from pipeline.models import EnsemblePrediction
from pipeline.result import ClusterResult, FaceResult, ShotResult
from pipeline.sampling import SampledFace, ShotSamples
from pipeline.segment import Shot
from pipeline.settings import AnalysisSettings
from pipeline.tracks import TrackFace, Tracks, build_tracks

#: ``timer(stage)``: a context manager adding the time spent inside to ``stage``'s total.
StageTimer = Callable[[str], AbstractContextManager[None]]


def finish_shot(
    models: PipelineModels,
    settings: AnalysisSettings,
    samples: ShotSamples,
    sink: ArtefactSink,
    prefix: str,
    timer: StageTimer,
) -> ShotResult:
    """Tracks, scores, aggregation and pictures for one shot; releases its crops."""
    s = settings
    faces = samples.faces
    n_frames = len(samples.frames)
    if not faces:
        tracks = Tracks([])
        result = shot_result(samples.shot, n_frames, faces, tracks, [], None, s)
        score_of: dict[int, float] = {}
    else:
        with timer("tracks"):
            crops = [f.crop for f in faces]
            embeddings = models.embed_faces(crops) if models.has_embedder else None
            tracks = link_tracks(faces, n_frames, s, embeddings)
        kept = kept_faces(tracks)
        with timer("scoring"):
            pred = models.score_faces([faces[i].crop for i in kept])
        result = shot_result(samples.shot, n_frames, faces, tracks, kept, pred, s)
        score_of = {i: float(pred.probability[j]) for j, i in enumerate(kept)}
    if s.galleries and (faces or samples.frames):
        with timer("gallery"):
            gallery.write_shot_pictures(
                sink,
                prefix,
                samples,
                tracks.clusters,
                result,
                score_of,
                s.gallery_max_tiles,
                s.collage_max_tiles,
            )
    return result


def link_tracks(
    faces: Sequence[SampledFace],
    n_frames: int,
    settings: AnalysisSettings,
    embeddings: np.ndarray | None,
) -> Tracks:
    """A shot's faces (found on ``n_frames`` sampled frames) linked into tracks; too short ones
    are dropped. ``embeddings``: one row per face when a face embedder is installed."""
    return build_tracks(
        [TrackFace(f.frame_pos, f.detection.box) for f in faces],
        max(n_frames, 1),
        embeddings,
        sim_threshold=settings.sim_threshold,
        iou_threshold=settings.iou_threshold,
        min_fraction=settings.min_track_fraction,
    )


def kept_faces(tracks: Tracks) -> list[int]:
    """Indices of the faces the ensemble scores: those of the kept tracks, track by track."""
    return [i for cluster in tracks.clusters for i in cluster]


def shot_result(
    shot: Shot,
    n_frames: int,
    faces: Sequence[SampledFace],
    tracks: Tracks,
    kept: Sequence[int],
    pred: EnsemblePrediction | None,
    settings: AnalysisSettings,
) -> ShotResult:
    """Paper 3.1 for one shot: each kept track scored with the mean of its faces, the shot with
    the max over its tracks. ``pred`` holds the scores of the ``kept`` faces, in that order."""
    result = ShotResult(
        index=shot.index,
        start_s=round(shot.start_s, 4),
        end_s=round(shot.end_s, 4),
        sampled_frames=n_frames,
        faces_detected=len(faces),
        clusters=[],
        dropped_clusters=len(tracks.dropped),
    )
    if pred is not None:
        position = {i: j for j, i in enumerate(kept)}
        for cid, cluster in enumerate(tracks.clusters):
            face_results = [
                FaceResult(
                    frame_index=faces[i].frame_index,
                    time_s=round(faces[i].time_s, 4),
                    box=faces[i].detection.box,
                    detection_confidence=round(faces[i].detection.confidence, 6),
                    score=float(pred.probability[position[i]]),
                    member_scores=pred.member_dict(position[i]),
                )
                for i in cluster
            ]
            result.clusters.append(
                ClusterResult(
                    id=cid, score=track_score([f.score for f in face_results]), faces=face_results
                )
            )
    result.score = max_or_none([c.score for c in result.clusters])
    result.label = settings.bands.label(result.score)
    return result


def image_tracks(n_faces: int) -> Tracks:
    """An image's "tracks": each face its own (paper 3.1: an image's score is the max over its
    faces)."""
    return Tracks([[i] for i in range(n_faces)])


def image_shot(
    detections: Sequence[Detection], pred: EnsemblePrediction, settings: AnalysisSettings
) -> ShotResult:
    """An image as one shot of one frame whose tracks are its faces; ``pred`` scores them all."""
    faces = [SampledFace(0, 0, 0.0, d, _NO_CROP) for d in detections]
    kept = list(range(len(faces)))
    return shot_result(IMAGE_SHOT, 1, faces, image_tracks(len(faces)), kept, pred, settings)


#: The one shot of an image.
IMAGE_SHOT = Shot(0, 0.0, 0.0)
_NO_CROP = np.zeros((0, 0, 3), np.uint8)


class ShotFinisher:
    """Finishes shots (``finish``: :func:`finish_shot` bound to one analysis) as pass 2
    completes them.

    With one worker a shot is finished in the decoding thread and its memory released at once
    (a long video must not need more RAM than a short one), and scoring progress is reported.
    With more (useful when the models are remote, as in Serve) shots are finished on threads,
    never more in flight than workers (plus the one decoding), which bounds memory too.
    """

    def __init__(
        self,
        finish: Callable[[ShotSamples], ShotResult],
        samples: dict[int, ShotSamples],
        workers: int,
        report: Callable[[str, int, int], None],
    ) -> None:
        self._finish = finish
        self._samples = samples
        self._total = len(samples)
        self._workers = workers
        self._report = report
        self._results: dict[int, ShotResult] = {}
        self._futures: dict[int, Future[ShotResult]] = {}
        self._executor = ThreadPoolExecutor(workers) if workers > 1 else None

    def __enter__(self) -> ShotFinisher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def finish(self, shot_idx: int) -> None:
        """Hand shot ``shot_idx`` to scoring (unless it was); its samples leave ``samples``."""
        if shot_idx not in self._samples:
            return
        samples = self._samples.pop(shot_idx)
        if self._executor is None:
            self._results[shot_idx] = self._finish(samples)
            del samples
            release_free_memory()
            self._report("scoring", len(self._results), self._total)
            return
        self._futures[shot_idx] = self._executor.submit(self._finish, samples)
        while sum(not f.done() for f in self._futures.values()) > self._workers:
            next(f for f in self._futures.values() if not f.done()).result()

    def finish_all(self) -> dict[int, ShotResult]:
        """Finish the shots left and wait for all; results by shot index."""
        for idx in sorted(self._samples):
            self.finish(idx)
        for idx, fut in self._futures.items():
            self._results[idx] = fut.result()
        return self._results
