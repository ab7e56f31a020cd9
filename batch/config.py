"""The settings of the runs over a dataset, validated once at the boundary (CLI, API or a test).

Defaults run on a laptop: one actor per stage sharing the CPUs, no galleries, per-face output
on. On a GPU cluster raise the model stages' ``actors`` (``detect``, ``score``) and let their
``num_gpus`` default to an even share of the GPUs (several actors per GPU: the models of paper
3.2 are small next to a GPU's memory), and give ``decode`` as many actors as the CPU nodes have
cores to spare (README, "Sizing a run").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from batch.datasets import DatasetName
from pipeline.analyze import AnalysisSettings


def batch_analysis_settings() -> AnalysisSettings:
    """The paper's analysis without pictures: a batch run keeps scores, never galleries."""
    return AnalysisSettings(galleries=False)


class DatasetRunConfig(BaseModel):
    """What every run over a dataset names first: the rows it reads and the folder it writes."""

    model_config = ConfigDict(extra="forbid")

    #: Which reader turns ``root`` into rows (see :func:`batch.datasets.read_dataset`).
    dataset: DatasetName
    #: The dataset's folder in its official layout (for ``csv``: the manifest file).
    root: Path
    #: The output folder (an evaluation run folder, a faces folder).
    out: Path
    #: Keep only rows of this split (the reader's split); None = every row the reader finds.
    split: str | None = None
    #: Reader options, e.g. ``{"compression": "c40"}`` for FF++.
    reader_options: dict[str, Any] = Field(default_factory=dict)


class StageSettings(BaseModel):
    """One stage of a staged run: how many actors run it and what each reserves."""

    model_config = ConfigDict(extra="forbid")

    #: Actors in the stage's pool (each loads the stage's models once).
    actors: int = Field(1, ge=1)
    #: Logical CPUs each actor reserves. Fractional on purpose: actors reserving a whole CPU each
    #: on a 2-core machine leave nothing for Ray Data's own tasks and the run stalls (measured,
    #: ../shared/RAY_NOTES.md).
    num_cpus: float = Field(0.5, gt=0.0)
    #: GPU share of each actor; None = an even share of the cluster's GPUs among the actors of
    #: the model stages (0 without GPUs). Ignored by the decode stage (CPU only) and when the
    #: models run in a Serve application.
    num_gpus: float | None = Field(None, ge=0.0)
    #: Memory each actor reserves (MiB; None: none), so that Ray places no more actors on a
    #: node than its memory holds (the full-size ensemble on CPU: `dfd bench evaluate` measured
    #: 1.9 GB per scoring actor; an attack actor with PGD batches of 2 faces: about 5 GB).
    memory_mb: int | None = Field(None, ge=1)
    #: Tasks (shots, or chunks of a face sequence) per call: what is batched across videos.
    batch_size: int = Field(1, ge=1)


class RayRunSettings(BaseModel):
    """What every Ray Data run over a dataset (evaluation, attack) sets the same way, under the
    same names."""

    model_config = ConfigDict(extra="forbid")

    #: ``torch.set_num_threads`` inside each actor (0: torch's default). One thread per actor is
    #: several times faster for MTCNN when actors share cores (measured here).
    torch_threads: int = Field(1, ge=0)
    #: Retries of a task whose worker process died (crash, out of memory) before its video is
    #: written as a ``worker-lost`` error row (Ray Data's default would retry it forever).
    max_task_retries: int = Field(1, ge=0)
    #: Rows are written in parts of at most this many rows, or every ``flush_s`` seconds: what
    #: a crash can lose, and what a resumed run redoes.
    flush_rows: int = Field(64, ge=1)
    flush_s: float = Field(30.0, gt=0.0)
    #: Rerun rows whose stored result is an error (other finished rows are always skipped).
    retry_errors: bool = False
    #: The run fails (after writing every row) when more than this share of the rows it
    #: attempted lost their worker on every retry: a crash or out-of-memory that hits many
    #: videos is a fault of the run, not of the videos.
    max_lost_fraction: float = Field(0.05, ge=0.0, le=1.0)


class StagedRunSettings(RayRunSettings):
    """What every run through the stages of :mod:`batch.stages` sets (evaluation, attack): the
    method's settings and the first stages' sizes. Each run adds its last model stage
    (:meth:`final_stage`: the ensemble for an evaluation, the attack for an attack run).

    The stages' actors receive only these fields (:meth:`stage_json`).
    """

    #: The method's settings (paper numbers); model directory, backend and device inside.
    analysis: AnalysisSettings = Field(default_factory=batch_analysis_settings)
    #: Probe, shot boundaries and frame decoding (CPU), one video per call.
    decode: StageSettings = Field(default_factory=lambda: StageSettings(actors=1))
    #: Face detection; ``batch_size`` shots per call (each up to 64 frames).
    detect: StageSettings = Field(default_factory=lambda: StageSettings(batch_size=2))
    tracks_num_cpus: float = Field(0.25, gt=0.0)
    #: Reach the deployments of this running Serve application instead of actor-local models
    #: (the serving replicas stay warm and are shared).
    serve_app: str | None = None
    #: Give memory freed by each batch back to the OS (glibc ``malloc_trim``): keeps a long
    #: run's workers flat instead of growing with heap fragmentation (measured: see
    #: :func:`pipeline.memory.release_free_memory`).
    trim_memory: bool = True
    #: Object-store memory the run's stages may hold at once (MiB; None: Ray Data's own budget).
    #: Decoded frames wait in the object store between decoding and detection; this caps them.
    object_store_mb: int | None = Field(None, ge=64)

    def final_stage(self) -> StageSettings:
        """The run's last model stage (after face tracks)."""
        raise NotImplementedError

    def model_actors(self) -> int:
        """Actors that may take a GPU share (face detection and the last stage)."""
        return self.detect.actors + self.final_stage().actors

    def actor_pools(self) -> tuple[StageSettings, ...]:
        """The stages that run as actor pools: decoding, face detection, the last stage."""
        return (self.decode, self.detect, self.final_stage())

    def reserved_cpus(self) -> float:
        """Logical CPUs the stages' actors reserve, plus one face-tracks task."""
        return sum(p.actors * p.num_cpus for p in self.actor_pools()) + self.tracks_num_cpus

    def reserved_memory_mb(self) -> int:
        """Memory the stages' actors reserve (MiB; stages with ``memory_mb`` set)."""
        return sum(p.actors * (p.memory_mb or 0) for p in self.actor_pools())

    def stage_json(self) -> str:
        """The :class:`StagedRunSettings` fields alone, as the stages' actors read them."""
        fields = set(StagedRunSettings.model_fields)
        return StagedRunSettings.model_validate(self.model_dump(include=fields)).model_dump_json()


class EvaluationConfig(DatasetRunConfig, StagedRunSettings):
    """Everything an evaluation run needs; stored as ``run.json`` inside the run folder
    (``out``: ``run.json``, ``predictions/`` and ``faces/`` Parquet parts).

    The run streams through the stages of :mod:`batch.stages`; ``decode``, ``detect`` and
    ``score`` size them (the face tracks are plain tasks of ``tracks_num_cpus`` each).
    """

    #: The ensemble; ``batch_size`` shots per call (their kept faces in one batch).
    score: StageSettings = Field(default_factory=lambda: StageSettings(batch_size=16))
    #: Write one Parquet row per scored face as well (needed for frame-level metrics).
    per_face: bool = True
    #: ``label_pred`` is 1 when ``score >= threshold``.
    threshold: float = Field(0.5, ge=0.0, le=1.0)

    def final_stage(self) -> StageSettings:
        return self.score
