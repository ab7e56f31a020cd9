"""``dfd evaluate``, ``dfd report`` and ``dfd model-card``: paper section 4 from the command line.

``dfd evaluate --dataset celebdf --root /data/Celeb-DF-v2 --out runs/cdf`` scores every video of
the dataset on Ray Data (resumable: rerun the same command to finish a stopped run) and writes the
paper's tables for the run into ``runs/cdf/report``. ``dfd report RUN...`` compares runs side by
side; ``dfd model-card`` renders the model card from the manifest and a report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from dfd.common import BackendOpt, EnsembleOpt, cli_errors, err_console, out_console
from pipeline.errors import ConfigError


def _rich(table: Any) -> RichTable:
    """An :class:`evaluation.report.Table` for the terminal."""
    out = RichTable(title=table.caption or None)
    for i, header in enumerate(table.headers):
        out.add_column(header, justify="left" if i == 0 else "right")
    for row in table.rows:
        out.add_row(*row)
    return out


def _reader_options(options: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values parsed as JSON when they are JSON (lists, numbers)."""
    parsed: dict[str, Any] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option takes KEY=VALUE, got {item!r}")
        try:
            parsed[key] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key] = value
    return parsed


def evaluate(
    dataset: Annotated[str, typer.Option(help="ffpp, celebdf, wdf, dfdc or csv.")],
    root: Annotated[Path, typer.Option(help="The dataset's folder (for csv: the manifest file).")],
    out: Annotated[Path, typer.Option(help="The run folder (rerun to resume).")],
    split: Annotated[
        str | None, typer.Option(help="Only this split: train, val, test or unspecified.")
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory.")] = None,
    actors: Annotated[int, typer.Option(help="Model actors in the pool.")] = 2,
    serve_app: Annotated[
        str | None,
        typer.Option(help="Score through this running Serve application's deployments."),
    ] = None,
    backend: BackendOpt = "auto",
    ensemble: EnsembleOpt = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    cpus_per_actor: Annotated[float, typer.Option(help="Logical CPUs per actor.")] = 0.5,
    gpus_per_actor: Annotated[
        float | None, typer.Option(help="GPU share per actor (default: an even share).")
    ] = None,
    max_frames: Annotated[int, typer.Option(help="Frames per shot for faces (paper: 64).")] = 64,
    per_face: Annotated[
        bool, typer.Option(help="Also write one row per face (frame-level metrics).")
    ] = True,
    retry_errors: Annotated[
        bool, typer.Option("--retry-errors", help="Rerun rows that ended in an error.")
    ] = False,
    limit: Annotated[int | None, typer.Option(help="Only the first N rows (a smoke test).")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(help="Reader option KEY=VALUE, e.g. compression=c40 (repeatable)."),
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS or local).")
    ] = None,
    report: Annotated[bool, typer.Option(help="Write OUT/report when the run ends.")] = True,
) -> None:
    """Score a dataset on Ray Data and write per-video predictions (Parquet) and the tables."""
    run_evaluate(
        dataset, root, out, split, model_dir, actors, serve_app, backend, device,
        cpus_per_actor, gpus_per_actor, max_frames, per_face, retry_errors, limit, option,
        address, report, ensemble,
    )  # fmt: skip


@cli_errors
def run_evaluate(
    dataset: str,
    root: Path,
    out: Path,
    split: str | None,
    model_dir: Path | None,
    actors: int,
    serve_app: str | None,
    backend: str,
    device: str,
    cpus_per_actor: float,
    gpus_per_actor: float | None,
    max_frames: int,
    per_face: bool,
    retry_errors: bool,
    limit: int | None,
    option: list[str] | None,
    address: str | None,
    report: bool,
    ensemble: str | None = None,
) -> None:
    import ray
    from pydantic import ValidationError

    from batch.config import EvaluationConfig, batch_analysis_settings
    from batch.datasets import read_dataset, summarize
    from batch.evaluate import run_evaluation
    from pipeline.faces import FaceSettings
    from pipeline.models import InferenceSettings

    try:
        analysis = batch_analysis_settings().model_copy(
            update={
                "inference": InferenceSettings.model_validate(
                    {
                        "model_dir": model_dir,
                        "backend": backend,
                        "device": device,
                        "ensemble": ensemble,
                    }
                ),
                "faces": FaceSettings(
                    max_frames_per_shot=max_frames,
                    device=device if device.startswith("cuda") else "cpu",
                ),
            }
        )
        config = EvaluationConfig(
            dataset=dataset,
            root=root,
            out=out,
            split=split,
            reader_options=_reader_options(option),
            analysis=analysis,
            actors=actors,
            actor_num_cpus=cpus_per_actor,
            actor_num_gpus=gpus_per_actor,
            per_face=per_face,
            serve_app=serve_app,
            retry_errors=retry_errors,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: {first['msg']}") from exc

    rows = read_dataset(config.dataset, config.root, split=config.split, **config.reader_options)
    if limit is not None:
        rows = rows[:limit]
    counts = summarize(rows)
    err_console.print(
        f"{len(rows)} rows: "
        + ", ".join(
            f"{n} {'fake' if label else 'real'} {m} ({s})"
            for (s, m, label), n in sorted(counts.items())
        )
    )
    started_ray = False
    if not ray.is_initialized():
        with err_console.status("starting Ray"):
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        started_ray = True
    try:
        with Progress(
            TextColumn("scoring"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} rows"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err_console,
        ) as bar:
            task: TaskID | None = None

            def progress(done: int, total: int, elapsed_s: float) -> None:
                nonlocal task
                if task is None:
                    task = bar.add_task("scoring", total=total, rate="")
                rate = f"{done / elapsed_s:.2f} rows/s" if elapsed_s > 0 else ""
                bar.update(task, completed=done, total=total, rate=rate)

            summary = run_evaluation(config, rows=rows, progress=progress)
    finally:
        if started_ray:
            ray.shutdown()
    out_console.print(
        f"{summary.total} rows: {summary.skipped} already done, {summary.processed} scored now "
        f"({summary.rows_per_s:.2f} rows/s), {summary.no_face} without a face, "
        f"{summary.errors} errors; predictions in {out}/predictions"
    )
    if report:
        _report([out], out / "report", None, None, 1000)


def report(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders written by `dfd evaluate` or `dfd attack`.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Report folder (default: RUN/report for one run, else ./dfd-report)."),
    ] = None,
    name: Annotated[
        list[str] | None, typer.Option(help="Names of the runs in tables (one per run).")
    ] = None,
    val_run: Annotated[
        Path | None, typer.Option(help="Choose thresholds on this run's val rows.")
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples per interval.")] = 1000,
) -> None:
    """Markdown and HTML report: paper Tables 1 and 2, CIs, ROC curves, runs side by side."""
    target = out or (runs[0] / "report" if len(runs) == 1 else Path("dfd-report"))
    cli_errors(_report)(runs, target, name, val_run, n_boot)


def _report(
    runs: list[Path], out: Path, names: list[str] | None, val_run: Path | None, n_boot: int
) -> None:
    from evaluation.report import table1, table2, write_report
    from evaluation.robustness import is_attack_run, render_robustness_report

    # Attack runs (`dfd attack`) get the robustness report (paper Table 3 layout) beside it.
    attacks = [r for r in runs if is_attack_run(r)]
    runs = [r for r in runs if not is_attack_run(r)]
    if attacks:
        with err_console.status("computing robustness figures"):
            robust = render_robustness_report(attacks, out / "robustness")
        out_console.print(f"robustness report: {robust.markdown}\n                   {robust.html}")
    if not runs:
        return
    with err_console.status("computing metrics"):
        files = write_report(runs, out, names=names, n_boot=n_boot, val_run=val_run)
    for run in files.runs:
        if run.untrained:
            err_console.print(
                f"[bold yellow]WARNING[/]: {run.name}: {len(run.untrained)} models ran untrained "
                f"({', '.join(run.untrained)}): the figures measure untrained models"
            )
    out_console.print(_rich(table1(files.runs)))
    t2 = table2(files.runs)
    if t2 is not None:
        out_console.print(_rich(t2))
    out_console.print(f"report: {files.markdown}\n        {files.html}")


def model_card(
    run: Annotated[
        Path | None,
        typer.Option(help="A report folder (or a folder of reports, or a run folder)."),
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Model directory.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write here (.html for HTML); default: print Markdown.")
    ] = None,
) -> None:
    """The model card (Mitchell et al.) from the model manifest and the latest report."""
    cli_errors(_model_card)(run, model_dir, out)


def _model_card(run: Path | None, model_dir: Path | None, out: Path | None) -> None:
    from evaluation.model_card import render_model_card

    fmt = "html" if out is not None and out.suffix.lower() in (".html", ".htm") else "markdown"
    text = render_model_card(model_dir, run, fmt=fmt)  # type: ignore[arg-type]
    if out is None:
        print(text)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    out_console.print(f"model card: {out}")


# ----------------------------------------------------------------------------------------------
# ``dfd bench evaluate`` (registered in dfd/bench.py): actor pool versus a plain loop


def synthesise_clips(data: Path, out: Path, n: int, clip_s: float, max_side: int = 1280) -> Path:
    """``n`` clips of ``clip_s`` seconds cut from the face videos of ``data`` (../shared/data),
    at successive offsets, longer side at most ``max_side``; returns their CSV manifest
    (``path,label,manipulation,video_id``; labels from ``MANIFEST.csv``). Reused when present.
    """
    import csv

    import cv2

    manifest = out / "manifest.csv"
    if manifest.is_file() and sum(1 for _ in manifest.open()) == n + 1:
        return manifest
    with (data / "MANIFEST.csv").open(newline="", encoding="utf-8") as handle:
        sources = [
            r
            for r in csv.DictReader(handle)
            if r["kind"] == "video" and r["has_face"] == "yes" and r["file"].endswith(".mp4")
        ]
    if not sources:
        raise ConfigError(f"no face videos listed in {data / 'MANIFEST.csv'}")
    out.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,manipulation,video_id"]
    for k in range(n):
        source = sources[k % len(sources)]
        duration = float(source["duration_s"])
        passes = k // len(sources)
        span = max(duration - clip_s, 0.0)
        start = (passes * clip_s) % span if span > 0 else 0.0
        path = out / f"clip{k:03d}.mp4"
        cap = cv2.VideoCapture(str(data / source["file"]))
        fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        cap.set(cv2.CAP_PROP_POS_MSEC, start * 1000.0)
        writer = None
        try:
            for _ in range(round(clip_s * fps)):
                ok, frame = cap.read()
                if not ok:
                    break
                h, w = frame.shape[:2]
                scale = min(1.0, max_side / max(h, w))
                if scale < 1.0:
                    frame = cv2.resize(
                        frame, (round(w * scale) // 2 * 2, round(h * scale) // 2 * 2)
                    )
                if writer is None:
                    size = (frame.shape[1], frame.shape[0])
                    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
                writer.write(frame)
        finally:
            cap.release()
            if writer is not None:
                writer.release()
        label = "fake" if source["label_for_detector"] == "FAKE" else "real"
        method = (source["method"] or "unspecified").split(" (")[0] if label == "fake" else ""
        lines.append(f"{path},{label},{method},bench/{k:03d}")
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


class _MemorySampler:
    """Samples the driver's RSS and every model actor's RSS (Ray workers whose title names the
    ``MapWorker``) twice a second, from a thread; keeps peaks and the driver's series."""

    def __init__(self, interval_s: float = 0.5) -> None:
        import threading

        import psutil

        self._proc = psutil.Process()
        self.interval_s = interval_s
        self.driver: list[float] = []
        self.workers: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> _MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        import psutil

        while not self._stop.wait(self.interval_s):
            self.driver.append(self._proc.memory_info().rss / 2**20)
            for child in self._proc.children(recursive=True):
                try:
                    title = child.name() + " ".join(child.cmdline()[:1])
                    if "MapWorker" in title:
                        rss = child.memory_info().rss / 2**20
                        self.workers[child.pid] = max(self.workers.get(child.pid, 0.0), rss)
                except psutil.Error:
                    continue


def _sequential_worker(cfg: dict[str, Any], queue: Any) -> None:
    """The baseline: one process, one set of models, a plain ``for`` loop over the rows."""
    import sys
    import time

    import psutil
    import torch

    from batch.config import EvaluationConfig
    from batch.datasets import read_dataset
    from batch.evaluate import RowScorer, build_models, resolve_devices

    config = EvaluationConfig.model_validate_json(cfg["config"])
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    rows = read_dataset("csv", config.root)
    proc = psutil.Process()
    t0 = time.perf_counter()
    settings = resolve_devices(config.analysis)
    scorer = RowScorer(
        build_models(config.model_copy(update={"analysis": settings})),
        settings,
        per_face=False,
        trim_memory=config.trim_memory,
    )
    load_s = time.perf_counter() - t0
    rss, scores, seconds = [], {}, []
    for row in rows:
        t = time.perf_counter()
        scored = scorer.score(row, "csv")
        seconds.append(time.perf_counter() - t)
        scores[row.video_id] = scored.prediction["score"]
        rss.append(proc.memory_info().rss / 2**20)
        print(f"loop: {len(seconds)}/{len(rows)} rows", end="\r", file=sys.stderr, flush=True)
    queue.put(
        {
            "load_s": load_s,
            "seconds": seconds,
            "rss_mb": rss,
            "scores": scores,
            "threads": torch.get_num_threads(),
        }
    )


def _memory(series: list[float], k: int = 3) -> dict[str, float]:
    """RSS (MB) over a run's rows: mean of the first ``k`` rows, of ``k`` rows around the
    middle and of the last ``k``, and the peak. Flat memory means middle ~ last: the first
    rows include the allocator's warm-up (every clip size seen once), not growth."""
    if not series:
        return {"first": 0.0, "middle": 0.0, "last": 0.0, "peak": 0.0}
    mid = len(series) // 2
    parts = {
        "first": series[:k],
        "middle": series[max(0, mid - k // 2) : mid - k // 2 + k],
        "last": series[-k:],
    }
    out = {name: sum(v) / len(v) for name, v in parts.items()}
    out["peak"] = max(series)
    return out


def _memory_text(m: dict[str, float]) -> str:
    return f"{m['first']:.0f} -> {m['middle']:.0f} -> {m['last']:.0f} ({m['peak']:.0f})"


def bench_evaluate(
    videos: int,
    clip_s: float,
    data: Path,
    work: Path | None,
    model_dir: Path | None,
    backend: str,
    device: str,
    actors: int,
    cpus_per_actor: float,
    max_frames: int,
    sequential: bool,
    loop_threads: int,
    json_out: Path | None,
) -> dict[str, Any]:
    """Videos per minute of an evaluation run with an actor pool against a plain sequential
    loop over the same videos and models, and driver/worker memory over the run."""
    import multiprocessing as mp
    import tempfile
    import time

    import numpy as np
    import ray

    from batch.config import EvaluationConfig, batch_analysis_settings
    from batch.datasets import read_dataset
    from batch.evaluate import RunFolder, run_evaluation
    from pipeline.faces import FaceSettings
    from pipeline.models import InferenceSettings

    work = work or Path(tempfile.mkdtemp(prefix="dfd-bench-evaluate-"))
    with err_console.status(f"cutting {videos} clips of {clip_s:g} s from {data}"):
        manifest = synthesise_clips(data, work / "clips", videos, clip_s)
    rows = read_dataset("csv", manifest)
    analysis = batch_analysis_settings().model_copy(
        update={
            "inference": InferenceSettings.model_validate(
                {"model_dir": model_dir, "backend": backend, "device": device}
            ),
            "faces": FaceSettings(
                max_frames_per_shot=max_frames,
                device=device if device.startswith("cuda") else "cpu",
            ),
        }
    )
    out = work / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    config = EvaluationConfig(
        dataset="csv", root=manifest, out=out, analysis=analysis, actors=actors,
        actor_num_cpus=cpus_per_actor, per_face=False,
    )  # fmt: skip
    figures: dict[str, Any] = {"videos": len(rows), "clip_s": clip_s, "max_frames": max_frames}

    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, log_to_driver=False)
    figures["cpus"] = ray.cluster_resources().get("CPU")
    figures["gpus"] = ray.cluster_resources().get("GPU", 0.0)
    arrivals: list[tuple[int, float, float]] = []
    try:
        with _MemorySampler() as sampler:
            t0 = time.perf_counter()

            def progress(done: int, total: int, elapsed_s: float) -> None:
                arrivals.append(
                    (done, time.perf_counter() - t0, sampler._proc.memory_info().rss / 2**20)
                )
                err_console.print(
                    f"pool: {done}/{total} rows, {done / elapsed_s:.2f} rows/s", end="\r"
                )

            summary = run_evaluation(config, rows=rows, progress=progress)
            wall = time.perf_counter() - t0
    finally:
        if started_ray:
            ray.shutdown()
    err_console.print()
    table = RunFolder(out).predictions()
    assert table is not None
    pool = table.to_pandas()
    first, last = arrivals[0][1], arrivals[-1][1]
    steady = (len(arrivals) - 1) / (last - first) * 60 if last > first else float("nan")
    per_worker: dict[str, list[float]] = {}
    for _, r in pool.sort_values("finished_at").iterrows():
        per_worker.setdefault(str(r["worker"]), []).append(float(r["worker_rss_mb"]))
    driver_rows = [a[2] for a in arrivals]
    figures["pool"] = {
        "actors": actors,
        "cpus_per_actor": cpus_per_actor,
        "wall_s": wall,
        "first_row_s": first,
        "videos_per_min": len(rows) / wall * 60,
        "videos_per_min_steady": steady,
        "errors": summary.errors,
        "no_face": summary.no_face,
        "driver_rss_mb": _memory(driver_rows),
        "driver_rss_mb_sampled_peak": max(sampler.driver, default=0.0),
        "worker_rss_mb": {w: _memory(s) for w, s in per_worker.items()},
        "worker_rss_mb_sampled_peak": sampler.workers,
        "rows_per_worker": {w: len(s) for w, s in per_worker.items()},
    }
    if sequential:
        with err_console.status("plain sequential loop over the same videos and models"):
            ctx = mp.get_context("spawn")
            queue = ctx.Queue()
            job = {"config": config.model_dump_json(), "threads": loop_threads}
            proc = ctx.Process(target=_sequential_worker, args=(job, queue))
            t1 = time.perf_counter()
            proc.start()
            seq = queue.get()
            proc.join()
            seq_wall = time.perf_counter() - t1
        loop_s = sum(seq["seconds"])
        pooled = dict(zip(pool["video_id"], pool["score"], strict=True))
        diffs = [
            abs(pooled[v] - s) for v, s in seq["scores"].items()
            if s is not None and pooled.get(v) is not None and not np.isnan(pooled[v])
        ]  # fmt: skip
        figures["sequential"] = {
            "torch_threads": seq["threads"],
            "load_s": seq["load_s"],
            "wall_s": seq_wall,
            "videos_per_min": len(rows) / seq_wall * 60,
            "videos_per_min_steady": len(rows) / loop_s * 60,
            "rss_mb": _memory(seq["rss_mb"]),
            "max_abs_score_difference_vs_pool": max(diffs, default=float("nan")),
        }
        figures["ratio_pool_over_sequential"] = (
            figures["pool"]["videos_per_min"] / figures["sequential"]["videos_per_min"]
        )
        figures["ratio_pool_over_sequential_steady"] = (
            steady / figures["sequential"]["videos_per_min_steady"]
        )
    _print_bench(figures)
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return figures


def _print_bench(f: dict[str, Any]) -> None:
    table = RichTable(
        title=f"evaluation throughput: {f['videos']} clips of {f['clip_s']:g} s, "
        f"{f['max_frames']} frames per shot, {f['cpus']:g} CPUs, {f['gpus']:g} GPUs"
    )
    for col in ("mode", "videos/min", "steady", "wall s", "RSS MB: first -> middle -> last (peak)"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    p = f["pool"]
    table.add_row(
        f"actor pool ({p['actors']} x {p['cpus_per_actor']:g} CPU)",
        f"{p['videos_per_min']:.1f}",
        f"{p['videos_per_min_steady']:.1f}",
        f"{p['wall_s']:.0f}",
        "driver " + _memory_text(p["driver_rss_mb"]),
    )
    for worker, memory in p["worker_rss_mb"].items():
        label = f"  worker {worker} ({p['rows_per_worker'][worker]} rows)"
        table.add_row(label, "", "", "", _memory_text(memory))
    if "sequential" in f:
        s = f["sequential"]
        table.add_row(
            f"plain loop ({s['torch_threads']} torch threads)",
            f"{s['videos_per_min']:.1f}",
            f"{s['videos_per_min_steady']:.1f}",
            f"{s['wall_s']:.0f}",
            _memory_text(s["rss_mb"]),
        )
    out_console.print(table)
    if "sequential" in f:
        out_console.print(
            f"ratio pool/loop: {f['ratio_pool_over_sequential']:.2f} end to end, "
            f"{f['ratio_pool_over_sequential_steady']:.2f} steady (model loading excluded); "
            f"max |score difference| {f['sequential']['max_abs_score_difference_vs_pool']:.1e}"
        )
