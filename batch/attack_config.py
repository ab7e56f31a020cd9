"""The settings of one attack run (``dfd attack``): the analysis and the first stages as in the
clean run (:class:`batch.config.StagedRunSettings`, under the names every Ray Data run uses), the
attack, and the attack stage that replaces the ensemble's; validated once at the boundary."""

from __future__ import annotations

from pydantic import Field, model_validator

from batch.config import StagedRunSettings, StageSettings
from evaluation.attack_runs import AttackSettings


class AttackRunSettings(StagedRunSettings):
    """One attack run: the analysis and the stages as in the clean run, the attack, the layout.

    ``torch_threads``, ``max_task_retries``, ``flush_rows``, ``flush_s``, ``retry_errors``,
    ``decode``, ``detect`` and ``object_store_mb`` mean what they mean for an evaluation run; a
    part is written every 8 rows or 60 seconds here (an attacked row takes far longer than a
    scored one).
    """

    attack: AttackSettings = AttackSettings()
    #: The attack stage, in place of the evaluation's ensemble stage (each actor holds the
    #: ensemble, with gradients): ``actors``, ``num_cpus`` and ``num_gpus`` per actor (None: an
    #: even share of the cluster's GPUs among the model actors; 0: no GPU), ``batch_size`` shots
    #: per call, whose faces (of several videos) are attacked together in batches of
    #: ``attack.batch_size``. Default: one actor on half a CPU, no GPU, 4 shots per call.
    attackers: StageSettings = Field(
        default_factory=lambda: StageSettings(actors=1, num_cpus=0.5, num_gpus=0.0, batch_size=4)
    )
    flush_rows: int = Field(8, ge=1)
    flush_s: float = Field(60.0, gt=0.0)
    #: Rows (half fake, half real, first by video_id) whose most suspicious face is kept as an
    #: example for the report.
    examples: int = Field(8, ge=0)

    @model_validator(mode="after")
    def _local_models(self) -> AttackRunSettings:
        if self.serve_app is not None:
            raise ValueError(
                "an attack needs gradients through models loaded in its own actors: drop serve_app"
            )
        return self

    def final_stage(self) -> StageSettings:
        return self.attackers
