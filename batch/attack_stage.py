"""Attack runs through the stages of :mod:`batch.stages`: the attack stage in place of the
ensemble's, and the driver's assembly of one attack row per video.

Stages 1-4 (rows, decoding, face detection, face tracks) are the evaluation run's, so the faces
attacked are exactly the faces the clean run scores. :class:`AttackStage` scores the kept faces
of a batch of shots (several videos) with the ensemble, as :class:`batch.stages.ScoreStage`
does, attacks them (:class:`batch.attack_faces.FaceAttacker`, gradients through the whole
ensemble), re-scores the attacked crops, and sends on each shot's clean result with its faces'
attacked scores and perturbation sizes (:class:`batch.attack_video.AttackedShot`); no crop
leaves the stage but the example face of the rows that keep one. :class:`AttackAssembler`, on
the driver, aggregates a video's shots into one row with the functions the in-process attack
uses (:func:`batch.attack_video.attack_fields`), so both give the same rows.

A face's attack does not depend on which other faces share its batch: PGD without random starts
is computed per face (faces of several videos go through the network together), and the random
parts (random starts, black-box attacks) are seeded per shot, as in the in-process run.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from batch.assemble import TaskAssembler
from batch.attack_faces import FaceAttacker, FaceAttackOutput
from batch.attack_video import (
    AttackedShot,
    AttackExample,
    attack_fields,
    attack_row,
    example_fields,
    sequence_structure,
    shot_structure,
)
from batch.execution import error_fields, row_from_item
from batch.stages import ScoreStage, ShotTask, StageName, scored_crops, split_prediction
from evaluation.attack_runs import AttackSettings
from pipeline.aggregate import max_or_none
from pipeline.models import EnsemblePrediction


class AttackStage(ScoreStage):
    """Ray Data actor: the kept faces of a batch of shots scored, attacked and re-scored."""

    stage: StageName = "attack"

    def __init__(self, config_json: str, attack_json: str) -> None:
        super().__init__(config_json)
        ensemble = getattr(self.models, "ensemble", None)
        if ensemble is None:
            raise ValueError("an attack needs the ensemble loaded in this actor")
        settings = AttackSettings.model_validate_json(attack_json)
        self.attacker = FaceAttacker.for_ensemble(ensemble, settings)
        #: Random parts are seeded per call: attack such settings one shot per call.
        self.per_shot = settings.black_box is not None or settings.num_random_init > 0

    def _score(self, tasks: Sequence[ShotTask]) -> None:
        crops_of = [scored_crops(t) for t in tasks]
        pred = self.models.score_faces([c for crops in crops_of for c in crops])
        parts = split_prediction(pred, crops_of)
        t0 = time.perf_counter()
        outs = self._attack(crops_of, parts)
        seconds = time.perf_counter() - t0
        n_faces = max(sum(len(c) for c in crops_of), 1)
        for task, part, crops, out in zip(tasks, parts, crops_of, outs, strict=True):
            if out is not None:
                share = seconds * len(crops) / n_faces
                task.attacked = AttackedShot.of(part, out, share)
                if task.item.get("example"):
                    task.example = AttackExample.of(part, out)
            self.record_scores(task, part)

    def _attack(
        self, crops_of: Sequence[Sequence[np.ndarray]], parts: Sequence[EnsemblePrediction]
    ) -> list[FaceAttackOutput | None]:
        """Each task's faces attacked (None for a task without faces): in one call across the
        tasks, or one call per task when the attack draws random numbers."""
        if self.per_shot:
            return [
                self.attacker.attack_crops(c, p.member_probabilities) if c else None
                for c, p in zip(crops_of, parts, strict=True)
            ]
        flat = [c for crops in crops_of for c in crops]
        if not flat:
            return [None] * len(crops_of)
        clean = np.concatenate([p.member_probabilities for p in parts])
        out = self.attacker.attack_crops(flat, clean)
        outs: list[FaceAttackOutput | None] = []
        start = 0
        for crops in crops_of:
            outs.append(out.rows(start, start + len(crops)) if crops else None)
            start += len(crops)
        return outs


class AttackAssembler(TaskAssembler[dict[str, Any]]):
    """Attack rows (:mod:`batch.attack`), as the in-process attack writes them."""

    def __init__(self, items: Mapping[str, Mapping[str, Any]], threshold: float) -> None:
        super().__init__(items)
        self.threshold = threshold

    def build(self, item: Mapping[str, Any], tasks: Sequence[ShotTask]) -> dict[str, Any]:
        names = tasks[-1].member_names or self.member_names
        records = [t.attacked for t in tasks if t.attacked is not None]
        try:
            fields = self._fields(tasks, records, names)
        except Exception as exc:  # the row fails, never the run
            fields = error_fields(exc)
        return attack_row(
            row_from_item(item), str(item["dataset"]), names, fields,
            attack_seconds=sum(r.seconds for r in records),
            seconds=sum(t.busy_s for t in tasks),
        )  # fmt: skip

    def _fields(
        self, tasks: Sequence[ShotTask], records: Sequence[AttackedShot], names: Sequence[str]
    ) -> dict[str, Any]:
        first = tasks[0]
        if first.kind == "error":
            assert first.error is not None
            return dict(first.error)
        clean_score: float | None
        if first.kind == "sequence":
            structure = sequence_structure(sum(len(r.clean.probability) for r in records))
            n_shots, clean_score = 1, None
        else:
            shots = [t.result for t in tasks if t.result is not None]
            structure = shot_structure(shots, records)
            n_shots, clean_score = len(shots), max_or_none([s.score for s in shots])
        fields = attack_fields(structure, records, clean_score, names, self.threshold)
        fields["n_shots"] = n_shots
        example: AttackExample | None = None
        for task in tasks:  # the first of equals, in time order, as the in-process attack keeps
            if task.example is not None and task.example.beats(example):
                example = task.example
        if example is not None:
            fields.update(example_fields(example))
        return fields
