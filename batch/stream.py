"""The stages of :mod:`batch.stages` put together as one streaming Ray Data dataset.

Evaluation and attack runs share the first four stages (rows, decoding, face detection, face
tracks) and differ in the last model stage: the ensemble (:class:`batch.stages.ScoreStage`) or
the attack (:class:`batch.attack_stage.AttackStage`). :func:`stream_tasks` builds the dataset,
sizes each stage from the run's settings, bounds the object store when asked, and yields the
tasks as they leave the last stage, in any order (the driver reassembles them per video).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from batch.execution import data_context
from batch.stages import DecodeStage, DetectStage, ShotTask, from_table, link_tracks_batch
from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from batch.config import StagedRunSettings, StageSettings


def gpu_share(settings: StagedRunSettings, stage: StageSettings, cluster_gpus: float) -> float:
    """A model actor's GPU share: none when the models run in a Serve application (its
    replicas hold the GPUs), else the configured one, or (``num_gpus`` None) an even share of
    the cluster's GPUs among the model stages' actors, at most one each (0 without GPUs)."""
    if settings.serve_app is not None:
        return 0.0
    if stage.num_gpus is not None:
        return stage.num_gpus
    return min(1.0, cluster_gpus / settings.model_actors()) if cluster_gpus else 0.0


def stream_tasks(
    settings: StagedRunSettings,
    items: list[dict[str, Any]],
    final: type,
    final_kwargs: dict[str, Any],
    *,
    progress_bars: bool = True,
) -> Iterator[ShotTask]:
    """Every task of ``items`` (dataset rows with ``dataset`` and any fields the last stage
    reads) through the stages, ending with ``final`` (a ``map_batches`` class constructed with
    ``config_json`` and ``final_kwargs``, sized by ``settings.final_stage()``).

    Errored blocks do not stop the run (``max_errored_blocks=-1``): the driver writes the videos
    whose tasks never came back as ``worker-lost`` rows.

    Raises:
        ConfigError: the stages' actors reserve more CPUs or memory than the cluster has (every
            actor of a pool must start, so such a run would wait forever).
    """
    import ray
    from ray.data import ExecutionOptions, ExecutionResources

    if not ray.is_initialized():
        ray.init()
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
    if settings.reserved_cpus() > cpus:
        raise ConfigError(
            f"the stages reserve {settings.reserved_cpus():g} CPUs (actors x CPUs per actor, "
            f"plus {settings.tracks_num_cpus:g} for face tracks) but the Ray cluster has "
            f"{cpus:g}: lower --actors, --decode-actors or --cpus-per-actor"
        )
    memory_mb = float(resources.get("memory", 0.0)) / 2**20
    if settings.reserved_memory_mb() > memory_mb:
        raise ConfigError(
            f"the stages' actors reserve {settings.reserved_memory_mb():,} MiB of memory but the "
            f"Ray cluster has {memory_mb:,.0f} MiB: lower --actors or --actor-memory-mb"
        )
    config_json = settings.stage_json()
    ds: Any = ray.data.from_items(items, override_num_blocks=len(items))

    def actors(udf: type, stage: StageSettings, kwargs: dict[str, Any], gpu: bool) -> None:
        nonlocal ds
        ds = ds.map_batches(
            udf,
            fn_constructor_kwargs={"config_json": config_json, **kwargs},
            batch_size=stage.batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=stage.actors),
            num_cpus=stage.num_cpus,
            num_gpus=gpu_share(settings, stage, gpus) if gpu else 0.0,
            memory=None if stage.memory_mb is None else stage.memory_mb * 2**20,
            max_task_retries=settings.max_task_retries,
        )

    context: dict[str, Any] = {"max_errored_blocks": -1, "enable_progress_bars": progress_bars}
    if settings.object_store_mb is not None:
        limits = ExecutionResources(object_store_memory=settings.object_store_mb * 2**20)
        context["execution_options"] = ExecutionOptions(resource_limits=limits)
    with data_context(**context):
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing remote options as extra keywords but offers no named
            # parameter for max_task_retries; without it a task that kills its worker would be
            # retried forever (Ray Data's default is -1).
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            actors(DecodeStage, settings.decode.model_copy(update={"batch_size": 1}), {}, False)
            actors(DetectStage, settings.detect, {}, True)
            ds = ds.map_batches(
                link_tracks_batch,
                fn_kwargs={"settings_json": settings.analysis.model_dump_json()},
                batch_size=settings.detect.batch_size,
                batch_format="pyarrow",
                num_cpus=settings.tracks_num_cpus,
                max_retries=settings.max_task_retries,
            )
            actors(final, settings.final_stage(), final_kwargs, True)
        for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield from from_table(block)
