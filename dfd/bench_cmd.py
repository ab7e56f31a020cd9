"""``dfd bench``: repeatable benchmarks (never timed tests).

Each benchmark measures side by side in one run, excludes warm-up, reports model loading apart and
peak RSS per configuration (each configuration runs in its own spawned process, so one's memory
does not hide in another's). The commands here read their options into a settings object of
:mod:`bench` and run it; the measuring is there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer

from dfd.common import BackendOpt, DeviceOpt, EnsembleOpt, cli_errors, config_error

app = typer.Typer(
    help="Benchmarks (figures for the closing notes and the README).", no_args_is_help=True
)

#: ``../shared/data`` beside this checkout: the default image and video of the service benchmarks.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

ModelDirOpt = Annotated[Path | None, typer.Option(help="Model directory (default: the user's).")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="Write the figures as JSON.")]
DataOpt = Annotated[Path, typer.Option(help="The shared test media folder.")]
TorchThreadsOpt = Annotated[int, typer.Option(help="torch.set_num_threads (0: default).")]


def _ints(csv: str) -> list[int]:
    return [int(n) for n in csv.split(",")]


@app.command()
@cli_errors
def models(
    model_dir: ModelDirOpt = None,
    backends: Annotated[
        str, typer.Option(help="Comma-separated backends; the first is the baseline.")
    ] = "torch,onnx,openvino",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,4,8",
    faces: Annotated[int, typer.Option(help="Faces per timed run.")] = 16,
    repeats: Annotated[
        int, typer.Option(min=1, help="Timed runs per batch size; faces/s is their median.")
    ] = 3,
    ensemble: EnsembleOpt = None,
    device: DeviceOpt = "auto",
    torch_threads: TorchThreadsOpt = 0,
    member_workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Members scored side by side by the CPU runtimes (0: auto, one per core; "
            "1: in turn, each on every core).",
        ),
    ] = 0,
    json_out: JsonOpt = None,
) -> None:
    """Faces per second of the whole ensemble, per backend and batch size, and peak RSS.

    Each backend runs in its own process; the timed runs take turns across backends."""
    from bench.models import ModelsBenchSettings, bench_models
    from pipeline.models.settings import Backend

    chosen = backends.split(",")
    unknown = set(chosen) - set(get_args(Backend))
    if unknown:
        raise typer.BadParameter(
            f"unknown backend(s) {sorted(unknown)}; choose from {get_args(Backend)}",
            param_hint="--backends",
        )
    settings = ModelsBenchSettings(
        model_dir=model_dir,
        backends=chosen,
        batch_sizes=_ints(batch_sizes),
        faces=faces,
        repeats=repeats,
        ensemble=ensemble,
        device=device,
        torch_threads=torch_threads,
        member_workers=member_workers,
        json_out=json_out,
    )
    bench_models(settings)


@app.command()
@cli_errors
def analyze(
    videos: Annotated[
        list[Path] | None, typer.Argument(help="Videos (default: 5 from shared/data).")
    ] = None,
    data: DataOpt = Path("../shared/data"),
    model_dir: ModelDirOpt = None,
    backend: BackendOpt = "auto",
    max_frames: Annotated[int, typer.Option(help="Sampled frames per shot (paper: 64).")] = 64,
    galleries: Annotated[bool, typer.Option(help="Render the pictures too.")] = True,
    growth: Annotated[
        str, typer.Option(help="Comma-separated minutes for the growth curve ('' to skip).")
    ] = "",
    growth_dir: Annotated[Path, typer.Option(help="Where synthetic videos are cached.")] = Path(
        "/tmp/dfd-bench-videos"
    ),
    torch_threads: TorchThreadsOpt = 0,
    json_out: JsonOpt = None,
) -> None:
    """Per-stage time, frames sampled versus frames in the video, peak RSS; growth over length.

    Each configuration runs in its own process after a warm-up analysis, so model loading and
    one-off costs are reported apart and peak RSS is that configuration's alone.
    """
    from bench.analyze import AnalyzeBenchSettings, bench_analyze

    settings = AnalyzeBenchSettings(
        videos=videos or [],
        data=data,
        model_dir=model_dir,
        backend=backend,
        max_frames=max_frames,
        galleries=galleries,
        growth=[float(m) for m in growth.split(",")] if growth else [],
        growth_dir=growth_dir,
        torch_threads=torch_threads,
        json_out=json_out,
    )
    bench_analyze(settings)


@app.command()
@cli_errors
def serve(
    model_dir: ModelDirOpt = None,
    image: Annotated[
        Path | None, typer.Option(help="Image to submit (default: a face photo of ../shared/data).")
    ] = None,
    backend: BackendOpt = "auto",
    concurrency: Annotated[str, typer.Option(help="Comma-separated client counts.")] = "1,8,32",
    jobs_per_client: Annotated[int, typer.Option(help="Jobs per client at each concurrency.")] = 2,
    min_jobs: Annotated[int, typer.Option(help="At least this many jobs per round.")] = 12,
    runner_concurrency: Annotated[int, typer.Option(help="Jobs the runner analyses at once.")] = 4,
    overload_requests: Annotated[
        int, typer.Option(help="Submissions fired in the overload round.")
    ] = 200,
    in_process_runs: Annotated[int, typer.Option(help="Timed in-process analyses.")] = 10,
    torch_threads: Annotated[
        int, typer.Option(help="torch threads of the in-process analyzer (replicas get 1).")
    ] = 1,
    json_out: JsonOpt = None,
) -> None:
    """Image jobs through the service (local Ray + Serve, real HTTP on loopback): jobs/s and
    p50/p99 latency at each concurrency, with and without ``@serve.batch``; the same image
    through ``dfd analyze``'s in-process analyzer; and how fast the service refuses work
    beyond its capacity (429/503)."""
    from bench.serve import ServeBenchSettings, bench_serve

    settings = ServeBenchSettings(
        model_dir=model_dir,
        image=image or SHARED_DATA / "faces" / "fr_two_people.jpg",
        backend=backend,
        concurrency=_ints(concurrency),
        jobs_per_client=jobs_per_client,
        min_jobs=min_jobs,
        runner_concurrency=runner_concurrency,
        overload_requests=overload_requests,
        in_process_runs=in_process_runs,
        torch_threads=torch_threads,
        json_out=json_out,
    )
    bench_serve(settings)


@app.command("evaluate")
@cli_errors
def evaluate(
    videos: Annotated[int, typer.Option(help="Clips to score (cut from shared/data).")] = 50,
    clip_s: Annotated[float, typer.Option(help="Length of each clip, seconds.")] = 4.0,
    data: DataOpt = Path("../shared/data"),
    work: Annotated[
        Path | None, typer.Option(help="Folder for clips and runs (default: a temp folder).")
    ] = None,
    model_dir: ModelDirOpt = None,
    backend: BackendOpt = "auto",
    device: DeviceOpt = "auto",
    actors: Annotated[
        int, typer.Option(help="Actors of each model stage (detection, ensemble).")
    ] = 1,
    cpus_per_actor: Annotated[float, typer.Option(help="Logical CPUs per actor.")] = 0.5,
    score_batch: Annotated[int, typer.Option(help="Shots per ensemble call.")] = 16,
    max_frames: Annotated[int, typer.Option(help="Frames per shot for faces.")] = 16,
    sequential: Annotated[bool, typer.Option(help="Also time the plain loop.")] = True,
    loop_threads: Annotated[
        int, typer.Option(help="torch threads of the plain loop (0: torch's default).")
    ] = 0,
    json_out: JsonOpt = None,
) -> None:
    """Evaluation runs: videos/min of the Ray Data actor pool against a plain sequential loop
    over the same videos and models, and driver/worker memory as rows stream."""
    from bench.evaluate import EvaluateBenchSettings, bench_evaluate

    settings = EvaluateBenchSettings(
        videos=videos,
        clip_s=clip_s,
        data=data,
        work=work,
        model_dir=model_dir,
        backend=backend,
        device=device,
        actors=actors,
        cpus_per_actor=cpus_per_actor,
        score_batch=score_batch,
        max_frames=max_frames,
        sequential=sequential,
        loop_threads=loop_threads,
        json_out=json_out,
    )
    bench_evaluate(settings)


@app.command("attack")
@cli_errors
def attack(
    presets: Annotated[str, typer.Option(help="Comma-separated: tiny, paper ('' for none).")] = (
        "tiny,paper"
    ),
    model_dir: Annotated[Path | None, typer.Option(help="Also bench this model dir.")] = None,
    faces: Annotated[int, typer.Option(help="Faces per timed attack call.")] = 4,
    norm: Annotated[str, typer.Option(help="inf, 1 or 2.")] = "inf",
    eps: Annotated[float, typer.Option(help="PGD budget.")] = 0.2,
    max_iter: Annotated[int, typer.Option(help="PGD iterations (paper: 5).")] = 5,
    device: DeviceOpt = "cpu",
    torch_threads: TorchThreadsOpt = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write figures as JSON.")] = None,
) -> None:
    """Attacked faces per second per actor (PGD through the whole ensemble, then re-scoring),
    with small (tiny preset) and full-size (paper preset, untrained) models."""
    from pydantic import ValidationError

    from bench.attack import AttackBenchSettings, bench_attack
    from evaluation.attack_runs import AttackSettings

    try:
        pgd = AttackSettings(norm=norm, eps=eps, max_iter=max_iter, batch_size=max(faces, 1))
    except ValidationError as exc:
        raise config_error(exc) from exc
    settings = AttackBenchSettings(
        presets=[p for p in presets.split(",") if p],
        model_dir=model_dir,
        faces=faces,
        attack=pgd,
        device=device,
        torch_threads=torch_threads,
        json_out=json_out,
    )
    bench_attack(settings)


@app.command("cluster")
@cli_errors
def cluster(
    nodes: Annotated[str, typer.Option(help="Comma-separated node counts.")] = "1,2,3",
    model_dir: ModelDirOpt = None,
    image: Annotated[
        Path | None, typer.Option(help="Image to submit (default: a face photo of ../shared/data).")
    ] = None,
    video: Annotated[
        Path | None,
        typer.Option(help="Video for the per-stage costs (default: one of ../shared/data)."),
    ] = None,
    backend: BackendOpt = "auto",
    cpus_per_node: Annotated[float, typer.Option(help="Logical CPUs each node declares.")] = 4,
    jobs: Annotated[int, typer.Option(help="Image jobs per node count.")] = 24,
    concurrency: Annotated[int, typer.Option(help="Concurrent clients.")] = 8,
    runner_concurrency: Annotated[int, typer.Option(help="Jobs per runner replica.")] = 4,
    gpu_speedup: Annotated[
        float, typer.Option(help="Estimate: model stages this much faster on a GPU (assumed).")
    ] = 15.0,
    cpus_per_gpu_node: Annotated[
        int, typer.Option(help="Estimate: cores per GPU node (g5.xlarge: 4).")
    ] = 4,
    estimate_gpus: Annotated[str, typer.Option(help="Estimate for these GPU counts.")] = "1,4,16",
    json_out: JsonOpt = None,
) -> None:
    """Image jobs through the service on local Ray clusters of 1, 2, 3 nodes (each declaring
    one GPU; one set of models per node): jobs/s and its ratio to one node, latency, seconds
    per stage; then an estimate of videos per hour per GPU on a GPU cluster."""
    from bench.cluster import ClusterBenchSettings, bench_cluster

    settings = ClusterBenchSettings(
        nodes=_ints(nodes),
        model_dir=model_dir,
        image=image or SHARED_DATA / "faces" / "fr_two_people.jpg",
        video=video or SHARED_DATA / "deepfake" / "ffpp_c23_634.mp4",
        backend=backend,
        cpus_per_node=cpus_per_node,
        jobs=jobs,
        concurrency=concurrency,
        runner_concurrency=runner_concurrency,
        gpu_speedup=gpu_speedup,
        cpus_per_gpu_node=cpus_per_gpu_node,
        estimate_gpus=_ints(estimate_gpus),
        json_out=json_out,
    )
    bench_cluster(settings)


@app.command("train")
@cli_errors
def train(
    faces: Annotated[Path, typer.Option(help="A faces folder of `dfd faces extract`.")],
    member: Annotated[str, typer.Option(help="Member to train (manifest or sbi_lite0).")],
    workers: Annotated[
        str, typer.Option(help="Worker counts to compare, comma-separated.")
    ] = "1,2",
    steps: Annotated[int, typer.Option(help="Steps per epoch (the second epoch is timed).")] = 8,
    batch_size: Annotated[int, typer.Option(help="Faces per step and worker.")] = 16,
    cpus: Annotated[
        float,
        typer.Option(
            help="Logical CPUs shared by the workers of a configuration (leave some for the "
            "data tasks)."
        ),
    ] = 1.5,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per worker (0: CPU).")] = 0.0,
    init_backbone: Annotated[
        bool, typer.Option("--init-backbone", help="Start from ImageNet weights.")
    ] = False,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory (read only).")] = None,
    json_out: JsonOpt = None,
) -> None:
    """Training throughput: images/s for each worker count side by side (same faces, member and
    steps), data-loading and compute time per step, peak RSS per worker. The model directory is
    not written."""
    from bench.train import TrainBenchSettings, bench_train

    settings = TrainBenchSettings(
        faces=faces,
        member=member,
        workers=[int(w) for w in workers.split(",") if w.strip()],
        steps=steps,
        batch_size=batch_size,
        cpus=cpus,
        gpus_per_worker=gpus_per_worker,
        init_backbone=init_backbone,
        model_dir=model_dir,
        json_out=json_out,
    )
    bench_train(settings)
