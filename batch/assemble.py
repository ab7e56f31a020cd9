"""Stage 6 of a staged run, on the driver: a video's tasks back into one row.

Tasks (:class:`batch.stages.ShotTask`) come back in any order, from any actor, and a task retried
after its worker died may come twice. :class:`TaskAssembler` keeps the tasks of each unfinished
video (scores only: no frame or crop reaches the driver) until it holds every part up to the one
marked last, or an error task, then builds the row. :class:`VideoAssembler` builds prediction
rows with the functions the in-process scorer uses (:func:`batch.scoring.video_record`,
:func:`batch.scoring.sequence_record`), so both give the same rows; attack runs build theirs in
:class:`batch.attack_stage.AttackAssembler`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from batch.datasets import VideoRow
from batch.execution import row_from_item
from batch.scoring import ScoredRow, finish_record, sequence_record, video_record
from batch.stages import ShotTask

Row = TypeVar("Row")


class TaskAssembler(Generic[Row]):
    """Collects tasks per video; :meth:`add` returns a video's row once it is complete.
    Subclasses build the row (:meth:`build`): a prediction row, an attack row."""

    def __init__(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        self.items = items
        self.parts: dict[str, dict[int, ShotTask]] = {}
        self.finished: set[str] = set()
        self.member_names: tuple[str, ...] = ()

    def add(self, task: ShotTask) -> Row | None:
        vid = task.video_id
        if vid in self.finished:
            return None  # a retried task's second copy, or a part after its video's error
        if task.member_names:
            self.member_names = task.member_names
        parts = self.parts.setdefault(vid, {})
        if task.kind == "error":
            return self._finish(vid, [task])
        parts.setdefault(task.part, task)
        last = next((p for p, t in parts.items() if t.last), None)
        if last is None or len(parts) < last + 1:
            return None
        return self._finish(vid, [parts[p] for p in range(last + 1)])

    def unfinished(self) -> list[str]:
        """Videos with no row yet (their tasks were lost with a worker), in input order."""
        return [v for v in self.items if v not in self.finished]

    def _finish(self, vid: str, tasks: Sequence[ShotTask]) -> Row:
        self.finished.add(vid)
        self.parts.pop(vid, None)
        return self.build(self.items[vid], tasks)

    def build(self, item: Mapping[str, Any], tasks: Sequence[ShotTask]) -> Row:
        """The row of one video from its tasks: every part in order, or one error task."""
        raise NotImplementedError


class VideoAssembler(TaskAssembler[ScoredRow]):
    """Prediction rows (:mod:`batch.evaluate`), as the in-process scorer writes them."""

    def __init__(self, items: Mapping[str, Mapping[str, Any]], threshold: float) -> None:
        super().__init__(items)
        self.threshold = threshold

    def build(self, item: Mapping[str, Any], tasks: Sequence[ShotTask]) -> ScoredRow:
        row: VideoRow = row_from_item(item)
        names = tasks[-1].member_names or self.member_names
        first = tasks[0]
        record: dict[str, Any]
        faces: list[dict[str, Any]] = []
        if first.kind == "error":
            assert first.error is not None
            record = dict(first.error)
        elif first.kind == "sequence":
            scores = [s for t in tasks for s in t.scores]
            members = [m for t in tasks for m in t.member_scores]
            record, faces = sequence_record(scores, members, names)
        else:
            shots = [t.result for t in tasks if t.result is not None]
            frames = first.frames_segmented + sum(t.n_frames for t in tasks)
            record, faces = video_record(shots, frames, first.duration_s, names)
        scorer = tasks[-1]
        return finish_record(
            record,
            faces,
            row,
            str(item["dataset"]),
            threshold=self.threshold,
            digest=scorer.digest,
            elapsed_s=sum(t.busy_s for t in tasks),
            worker=scorer.worker,
            node=scorer.node,
            worker_rss_mb=scorer.worker_rss_mb,
        )
