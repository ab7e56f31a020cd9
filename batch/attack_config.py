"""The settings of one attack run (``dfd attack``): the analysis as in the clean run, the attack,
and the Ray layout; validated once at the boundary."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from evaluation.attack_runs import AttackSettings
from pipeline.analyze import AnalysisSettings


class AttackRunSettings(BaseModel):
    """One attack run: the analysis as in the clean run, the attack, and the Ray layout."""

    model_config = ConfigDict(extra="forbid")

    analysis: AnalysisSettings = AnalysisSettings(galleries=False)
    attack: AttackSettings = AttackSettings()
    #: Actors in the pool (each holds every model).
    actors: int = Field(1, ge=1)
    #: Fractional CPUs per actor: leaves room for Ray Data's own tasks on small machines.
    num_cpus_per_actor: float = Field(0.5, gt=0.0)
    #: GPU fraction per actor (several actors can share one GPU).
    num_gpus_per_actor: float = Field(0.0, ge=0.0)
    #: torch intra-op threads per actor (0: torch's default, one per core).
    torch_threads: int = Field(1, ge=0)
    #: A Parquet part is written every ``flush_every`` rows or ``flush_s`` seconds (what a crash
    #: can lose, and what a resumed run redoes).
    flush_every: int = Field(8, ge=1)
    flush_s: float = Field(60.0, gt=0.0)
    #: Retries of a row whose worker process died before it becomes a ``worker-lost`` error row
    #: (Ray Data's default would retry it forever).
    max_task_retries: int = Field(1, ge=0)
    #: Rows (half fake, half real, first by video_id) whose most suspicious face is kept as an
    #: example for the report.
    examples: int = Field(8, ge=0)
    retry_errors: bool = False
