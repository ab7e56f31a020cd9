"""The settings of one evaluation run, validated once at the boundary (CLI, API or a test).

Defaults run on a laptop: two model actors sharing the CPUs, no galleries, per-face output on.
On a GPU cluster raise ``actors`` and let ``actor_num_gpus`` default to an even share of the GPUs
(several actors per GPU: the models of paper 3.2 are small next to a GPU's memory).
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


class EvaluationConfig(DatasetRunConfig):
    """Everything an evaluation run needs; stored as ``run.json`` inside the run folder
    (``out``: ``run.json``, ``predictions/`` and ``faces/`` Parquet parts)."""

    #: The method's settings (paper numbers); model directory, backend and device inside.
    analysis: AnalysisSettings = Field(default_factory=batch_analysis_settings)
    #: Model actors in the pool (each loads every model once).
    actors: int = Field(2, ge=1)
    #: Logical CPUs each actor reserves. Fractional on purpose: two actors reserving a whole CPU
    #: each on a 2-core machine leave nothing for Ray Data's own tasks and the run stalls
    #: (measured, ../shared/RAY_NOTES.md).
    actor_num_cpus: float = Field(0.5, gt=0.0)
    #: GPU share of each actor; None = an even share of the cluster's GPUs (0 without GPUs).
    actor_num_gpus: float | None = Field(None, ge=0.0)
    #: ``torch.set_num_threads`` inside each actor (0: torch's default). One thread per actor is
    #: several times faster for MTCNN when actors share cores (measured here).
    torch_threads: int = Field(1, ge=0)
    #: Write one Parquet row per scored face as well (needed for frame-level metrics).
    per_face: bool = True
    #: ``label_pred`` is 1 when ``score >= threshold``.
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    #: Score through the deployments of this running Serve application instead of actor-local
    #: models (the serving replicas stay warm and are shared).
    serve_app: str | None = None
    #: Rerun rows whose stored prediction is an error (other finished rows are always skipped).
    retry_errors: bool = False
    #: Retries of a row whose worker process died (crash, out of memory) before it is written
    #: as an error row.
    max_task_retries: int = Field(1, ge=0)
    #: Give memory freed by each video back to the OS (glibc ``malloc_trim``): keeps a long
    #: run's workers flat instead of growing with heap fragmentation (measured: see
    #: :func:`pipeline.memory.release_free_memory`).
    trim_memory: bool = True
    #: Predictions are written in parts of at most this many rows, or every ``flush_s`` seconds:
    #: what a crash can lose, and what a resumed run redoes.
    flush_rows: int = Field(64, ge=1)
    flush_s: float = Field(30.0, gt=0.0)
