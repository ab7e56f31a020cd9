"""The settings of one attack run (``dfd attack``): the analysis as in the clean run, the attack,
and the Ray layout (under the names every Ray Data run uses: :class:`batch.config.RayRunSettings`
and :class:`batch.config.StageSettings`); validated once at the boundary."""

from __future__ import annotations

from pydantic import Field

from batch.config import RayRunSettings, StageSettings
from evaluation.attack_runs import AttackSettings
from pipeline.analyze import AnalysisSettings


class AttackRunSettings(RayRunSettings):
    """One attack run: the analysis as in the clean run, the attack, and the Ray layout.

    ``torch_threads``, ``max_task_retries``, ``flush_rows``, ``flush_s`` and ``retry_errors``
    mean what they mean for an evaluation run; a part is written every 8 rows or 60 seconds here
    (an attacked row takes far longer than a scored one).
    """

    analysis: AnalysisSettings = AnalysisSettings(galleries=False)
    attack: AttackSettings = AttackSettings()
    #: The attack actor pool (each actor holds every model): ``actors``, ``num_cpus`` and
    #: ``num_gpus`` per actor (None: an even share of the cluster's GPUs among the actors, at
    #: most one each; 0: no GPU). ``batch_size`` is not used (one dataset row per call; faces
    #: are batched by ``attack.batch_size``). Default: one actor on half a CPU (room for Ray
    #: Data's own tasks on small machines), no GPU.
    attackers: StageSettings = Field(
        default_factory=lambda: StageSettings(actors=1, num_cpus=0.5, num_gpus=0.0)
    )
    flush_rows: int = Field(8, ge=1)
    flush_s: float = Field(60.0, gt=0.0)
    #: Rows (half fake, half real, first by video_id) whose most suspicious face is kept as an
    #: example for the report.
    examples: int = Field(8, ge=0)
