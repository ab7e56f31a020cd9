"""``dfd attack``: an adversarial robustness run over a dataset (paper 4.1.3), on Ray Data.

Example (the paper's setting): ``dfd attack --dataset celebdf --root ~/data/Celeb-DF-v2
--norm inf --eps 0.2 --max-iter 5 --out runs/cdf-pgd-inf``. Rerunning the same command resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from dfd.common import BackendOpt, EnsembleOpt, cli_errors, err_console, out_console


def attack(
    dataset: Annotated[str, typer.Option(help="ffpp, celebdf, wdf, dfdc or csv.")],
    root: Annotated[Path, typer.Option(help="Dataset folder (official layout), or the CSV file.")],
    out: Annotated[Path, typer.Option(help="Run folder (created; rerun to resume).")],
    norm: Annotated[str, typer.Option(help="PGD norm: inf, 1 or 2.")] = "inf",
    eps: Annotated[float, typer.Option(help="Budget in the norm, [0, 1] pixel units.")] = 0.2,
    eps_step: Annotated[float, typer.Option(help="Step per iteration (ART's default 0.1).")] = 0.1,
    max_iter: Annotated[int, typer.Option(help="PGD iterations (paper: 5).")] = 5,
    split: Annotated[str | None, typer.Option(help="Only this split (train/val/test).")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows by video id.")] = None,
    transfer_from: Annotated[
        str | None, typer.Option(help="Craft on this member alone; the ensemble scores.")
    ] = None,
    black_box: Annotated[
        str | None, typer.Option(help="hopskipjump or square instead of PGD.")
    ] = None,
    max_queries: Annotated[int, typer.Option(help="Black-box query budget per face.")] = 1000,
    rate_per_min: Annotated[
        int, typer.Option(help="Per-key rate limit the black-box queries are set against.")
    ] = 60,
    defence: Annotated[
        str | None, typer.Option(help="Also score through jpeg, smoothing or squeeze.")
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory.")] = None,
    backend: BackendOpt = "auto",
    ensemble: EnsembleOpt = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    max_frames_per_shot: Annotated[int, typer.Option(help="Paper: 64.")] = 64,
    actors: Annotated[int, typer.Option(help="Actors in the pool.")] = 1,
    cpus_per_actor: Annotated[float, typer.Option(help="Ray CPUs per actor.")] = 0.5,
    gpus_per_actor: Annotated[float, typer.Option(help="GPU fraction per actor.")] = 0.0,
    torch_threads: Annotated[int, typer.Option(help="torch threads per actor (0: all).")] = 1,
    examples: Annotated[int, typer.Option(help="Rows that keep an example face.")] = 8,
    retry_errors: Annotated[bool, typer.Option(help="Redo rows that failed before.")] = False,
    local: Annotated[bool, typer.Option("--local", help="In this process, without Ray.")] = False,
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local one).")
    ] = None,
) -> None:
    """Attack every face of a dataset with ART and write clean and attacked scores side by side."""
    run_attack_cmd(**locals())


@cli_errors
def run_attack_cmd(**opts: object) -> None:
    from pydantic import ValidationError

    from batch.attack import AttackRunSettings, AttackSettings, run_attack
    from batch.datasets import read_dataset
    from evaluation.robustness import summarize_run
    from pipeline.analyze import AnalysisSettings
    from pipeline.errors import ConfigError
    from pipeline.faces import FaceSettings
    from pipeline.models import InferenceSettings

    o = dict(opts)
    try:
        settings = AttackRunSettings(
            analysis=AnalysisSettings(
                inference=InferenceSettings.model_validate(
                    {
                        "model_dir": o["model_dir"],
                        "backend": o["backend"],
                        "device": o["device"],
                        "ensemble": o.get("ensemble"),
                    }
                ),
                faces=FaceSettings(max_frames_per_shot=o["max_frames_per_shot"]),
                galleries=False,
            ),
            attack=AttackSettings(
                norm=o["norm"],
                eps=o["eps"],
                eps_step=o["eps_step"],
                max_iter=o["max_iter"],
                transfer_from=o["transfer_from"],
                black_box=o["black_box"],
                max_queries=o["max_queries"],
                rate_per_min=o["rate_per_min"],
                defence=o["defence"],
            ),
            actors=o["actors"],
            num_cpus_per_actor=o["cpus_per_actor"],
            num_gpus_per_actor=o["gpus_per_actor"],
            torch_threads=o["torch_threads"],
            examples=o["examples"],
            retry_errors=o["retry_errors"],
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{where}: {message}" if where else message) from None
    root = Path(str(o["root"]))
    rows = read_dataset(o["dataset"], root, split=o["split"])  # type: ignore[arg-type]
    if o["limit"] is not None:
        rows = rows[: int(str(o["limit"]))]
    if not o["local"]:
        import ray

        if not ray.is_initialized():
            ray.init(address=o["ray_address"])  # type: ignore[arg-type]
    err_console.print(f"{len(rows)} rows; attack: {settings.attack.describe()}")
    outcome = run_attack(
        rows,
        Path(str(o["out"])),
        settings,
        dataset=str(o["dataset"]),
        root=root,
        use_ray=not o["local"],
        progress=lambda done, total: err_console.print(f"{done}/{total}", end="\r"),
    )
    err_console.print()  # end the progress line
    summary = summarize_run(outcome.out)
    for name in summary.untrained_members:
        err_console.print(f"[bold yellow]WARNING[/]: member {name} ran with random weights")

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.2f}%"

    out_console.print(
        f"{outcome.processed} rows attacked, {outcome.skipped} already done, "
        f"{outcome.errors} errors, {outcome.seconds:.0f} s\n"
        f"BA clean {pct(summary.ba_clean)} -> attacked {pct(summary.ba_attacked)}; "
        f"attack success {pct(summary.attack_success_rate)}\nscores: {outcome.scores}"
    )


# ----------------------------------------------------------------------------------------------
# dfd bench attack


def _bench_worker(cfg: dict[str, Any], queue: Any) -> None:
    """One configuration in its own process: load, warm up on one face, time ``faces`` faces."""
    import resource
    import tempfile
    import time

    import numpy as np
    import torch

    from batch.attack import AttackSettings, FaceAttacker
    from pipeline.models import Ensemble, InferenceSettings
    from pipeline.models.manifest import ModelDirectory

    def peak_rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0

    if cfg["torch_threads"]:
        torch.set_num_threads(cfg["torch_threads"])
    with tempfile.TemporaryDirectory(prefix="dfd-bench-attack-") as tmp:
        model_dir = cfg["model_dir"]
        if model_dir is None:
            ModelDirectory(Path(tmp)).init(cfg["preset"])
            model_dir = tmp
        t0 = time.perf_counter()
        settings = InferenceSettings(model_dir=model_dir, backend="torch", device=cfg["device"])
        ensemble = Ensemble.load(settings)
        attack = AttackSettings.model_validate(cfg["attack"])
        attacker = FaceAttacker.for_ensemble(ensemble, attack)
        load_s = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        sides = rng.integers(160, 400, size=(cfg["faces"] + 1, 2))
        crops = [rng.integers(0, 256, size=(int(h), int(w), 3), dtype=np.uint8) for h, w in sides]
        attacker.attack_crops(crops[:1])  # warm-up
        t = time.perf_counter()
        out = attacker.attack_crops(crops[1:])
        seconds = time.perf_counter() - t
    queue.put(
        {
            "label": cfg["label"],
            "members": list(ensemble.member_names),
            "input_size": attacker.input_size,
            "weights": sorted({m.info.weights for m in ensemble.members}),
            "threads": torch.get_num_threads(),
            "faces": cfg["faces"],
            "seconds": seconds,
            "faces_per_s": cfg["faces"] / seconds,
            "load_s": load_s,
            "peak_rss_mb": peak_rss_mb(),
            "linf_max": float(out.linf.max()),
        }
    )


def bench_attack(
    presets: list[str],
    model_dir: Path | None,
    faces: int,
    attack_settings: dict[str, Any],
    device: str,
    torch_threads: int,
    json_out: Path | None,
) -> list[dict[str, Any]]:
    """Attacked faces per second of one actor (one process), per model size.

    Times :meth:`batch.attack.FaceAttacker.attack_crops`: resize, PGD through the whole ensemble
    (``max_iter`` forward and backward passes) and re-scoring; face extraction is not included
    (``dfd bench analyze`` measures it). Each configuration runs in a spawned process after a
    one-face warm-up.
    """
    import json
    import multiprocessing as mp

    from rich.table import Table

    configs: list[dict[str, Any]] = [{"label": p, "preset": p, "model_dir": None} for p in presets]
    if model_dir is not None:
        configs.append({"label": str(model_dir), "preset": None, "model_dir": str(model_dir)})
    results = []
    ctx = mp.get_context("spawn")
    for cfg in configs:
        cfg.update(faces=faces, attack=attack_settings, device=device, torch_threads=torch_threads)
        queue = ctx.Queue()
        proc = ctx.Process(target=_bench_worker, args=(cfg, queue))
        proc.start()
        results.append(queue.get())
        proc.join()
    describe = attack_settings.get("norm", "inf"), attack_settings.get("max_iter", 5)
    table = Table(
        title=f"attacked faces per second, one actor (PGD norm-{describe[0]}, "
        f"{describe[1]} iterations)"
    )
    for col in (
        "models",
        "input",
        "weights",
        "threads",
        "faces",
        "s",
        "faces/s",
        "s/face",
        "load s",
        "peak RSS MB",
    ):
        table.add_column(col, justify="right")
    for r in results:
        table.add_row(
            r["label"],
            str(r["input_size"]),
            ",".join(r["weights"]),
            str(r["threads"]),
            str(r["faces"]),
            f"{r['seconds']:.1f}",
            f"{r['faces_per_s']:.3f}",
            f"{1 / r['faces_per_s']:.2f}",
            f"{r['load_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
        )
    out_console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
    return results
