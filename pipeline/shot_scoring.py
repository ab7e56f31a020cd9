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

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager

from pipeline import gallery
from pipeline.aggregate import max_or_none, track_score
from pipeline.artefacts import ArtefactSink
from pipeline.memory import release_free_memory
from pipeline.model_access import PipelineModels
from pipeline.result import ClusterResult, FaceResult, ShotResult
from pipeline.sampling import ShotSamples
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
    shot, faces = samples.shot, samples.faces
    result = ShotResult(
        index=shot.index,
        start_s=round(shot.start_s, 4),
        end_s=round(shot.end_s, 4),
        sampled_frames=len(samples.frames),
        faces_detected=len(faces),
        clusters=[],
    )
    if faces:
        with timer("tracks"):
            tracks = _tracks(models, settings, samples)
        score_of = _score_tracks(models, samples, tracks.clusters, result, timer)
        result.dropped_clusters = len(tracks.dropped)
        result.score = max_or_none([c.score for c in result.clusters])
        if s.galleries:
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
    result.label = s.bands.label(result.score)
    if s.galleries and result.gallery is None and samples.frames:
        with timer("gallery"):
            gallery.write_shot_pictures(
                sink, prefix, samples, [], result, {}, s.gallery_max_tiles, s.collage_max_tiles
            )
    return result


def _tracks(models: PipelineModels, settings: AnalysisSettings, samples: ShotSamples) -> Tracks:
    """The shot's faces linked into tracks; too short ones are dropped."""
    faces = samples.faces
    embeddings = models.embed_faces([f.crop for f in faces]) if models.has_embedder else None
    return build_tracks(
        [TrackFace(f.frame_pos, f.detection.box) for f in faces],
        max(len(samples.frames), 1),
        embeddings,
        sim_threshold=settings.sim_threshold,
        iou_threshold=settings.iou_threshold,
        min_fraction=settings.min_track_fraction,
    )


def _score_tracks(
    models: PipelineModels,
    samples: ShotSamples,
    clusters: list[list[int]],
    result: ShotResult,
    timer: StageTimer,
) -> dict[int, float]:
    """Score the faces of the kept tracks and append the tracks to ``result.clusters``, each
    scored with the mean of its faces. Returns the score of each kept face by its index."""
    faces = samples.faces
    kept = [i for cluster in clusters for i in cluster]
    with timer("scoring"):
        pred = models.score_faces([faces[i].crop for i in kept])
    score_of = {i: float(pred.probability[j]) for j, i in enumerate(kept)}
    members_of = {i: pred.member_dict(j) for j, i in enumerate(kept)}
    for cid, cluster in enumerate(clusters):
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
                id=cid, score=track_score([f.score for f in face_results]), faces=face_results
            )
        )
    return score_of


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
