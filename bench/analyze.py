"""``dfd bench analyze``: per-stage time, frames sampled versus frames in the video, resident memory
after loading the models and at its peak; and how time and memory grow with the video's length.

Each configuration runs in its own spawned process after a warm-up analysis, so model loading and
one-off costs are reported apart and peak RSS is that configuration's alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict
from rich.table import Table

from bench.harness import out_console, peak_rss_mb, process_memory_mb, run_isolated, write_json

#: The videos timed when none are given, relative to the shared test media folder.
DEFAULT_BENCH_VIDEOS = (
    "deepfake/dfdc_lynaeydofd.mp4",
    "deepfake/ffpp_c23_634_660.mp4",
    "deepfake/ffpp_c23_519_515.mp4",
    "videos/fr_short_hamilton_clip.mp4",
    "deepfake/dfdc_yhffcuhhjy.mp4",
)


class AnalyzeBenchSettings(BaseModel):
    """What ``dfd bench analyze`` measures (its options; the defaults are the command line's)."""

    model_config = ConfigDict(extra="forbid")

    #: Videos to time; empty: :data:`DEFAULT_BENCH_VIDEOS` of ``data``.
    videos: list[Path]
    #: The shared test media folder (default videos, warm-up image, growth sources).
    data: Path
    model_dir: Path | None = None
    backend: str
    #: Sampled frames per shot (paper: 64).
    max_frames: int
    #: Render the pictures too.
    galleries: bool
    #: Minutes of the synthetic videos of the growth curve (empty: no curve).
    growth: list[float]
    #: Where the synthetic videos are cached.
    growth_dir: Path
    #: ``torch.set_num_threads`` (0: torch's default).
    torch_threads: int
    json_out: Path | None = None


def _analyze_worker(cfg: dict[str, Any], queue: Any) -> None:
    import torch

    from pipeline.analyze import AnalysisSettings, load_analyzer
    from pipeline.artefacts import MemorySink
    from pipeline.faces import FaceSettings
    from pipeline.models import InferenceSettings

    if cfg["torch_threads"]:
        torch.set_num_threads(cfg["torch_threads"])
    t0 = time.perf_counter()
    settings = AnalysisSettings(
        inference=InferenceSettings(model_dir=cfg["model_dir"], backend=cfg["backend"]),
        faces=FaceSettings(max_frames_per_shot=cfg["max_frames"]),
        galleries=cfg["galleries"],
    )
    analyzer = load_analyzer(settings)
    load_s = time.perf_counter() - t0
    loaded = process_memory_mb()
    load_peak = peak_rss_mb()
    if cfg["warmup"]:
        analyzer.analyze(cfg["warmup"], MemorySink())
    rows = []
    for video in cfg["videos"]:
        t = time.perf_counter()
        result = analyzer.analyze(video, MemorySink())
        rows.append(
            {
                "video": Path(video).name,
                "seconds": time.perf_counter() - t,
                "duration_s": result.source.duration_s,
                "frames_in_video": result.source.frame_count,
                "frames_sampled": result.source.frames_sampled,
                "shots": len(result.shots),
                "faces": result.faces_total,
                "timings": result.timings,
            }
        )
    queue.put(
        {
            "load_s": load_s,
            "rss_loaded_mb": loaded["rss"],
            "private_loaded_mb": loaded["anon"],
            "load_peak_rss_mb": load_peak,
            "peak_rss_mb": peak_rss_mb(),
            "rows": rows,
        }
    )


def bench_analyze(settings: AnalyzeBenchSettings) -> dict[str, Any]:
    """Time the videos of ``settings`` (then the growth curve, if asked); print the tables and
    return the figures (``videos``, and ``growth`` with the curve)."""
    data = settings.data
    videos = settings.videos or [data / v for v in DEFAULT_BENCH_VIDEOS]
    base = {
        "model_dir": settings.model_dir,
        "backend": settings.backend,
        "max_frames": settings.max_frames,
        "galleries": settings.galleries,
        "torch_threads": settings.torch_threads,
        "warmup": str(data / "faces" / "fr_obama_small.jpg"),
    }
    chosen = [str(v) for v in videos]
    figures: dict[str, Any] = {"videos": run_isolated(_analyze_worker, {**base, "videos": chosen})}
    _print_videos(figures["videos"], settings.max_frames)
    if settings.growth:
        figures["growth"] = _growth_curve(settings, base)
        _print_growth(figures["growth"])
    write_json(settings.json_out, figures)
    return figures


def _print_videos(v: dict[str, Any], max_frames: int) -> None:
    """The per-video table and the totals line; ``v`` is one worker's figures."""
    table = Table(title=f"dfd analyze per video (max {max_frames} frames per shot)")
    cols = (
        "video",
        "s",
        "s/video-s",
        "frames sampled/total",
        "shots",
        "faces",
        "where the time goes",
    )
    for col in cols:
        table.add_column(
            col, justify="left" if col in ("video", "where the time goes") else "right"
        )
    for row in v["rows"]:
        stages = sorted(row["timings"].items(), key=lambda kv: -kv[1])[:3]
        table.add_row(
            row["video"],
            f"{row['seconds']:.1f}",
            f"{row['seconds'] / (row['duration_s'] or 1):.2f}",
            f"{row['frames_sampled']}/{row['frames_in_video']}",
            str(row["shots"]),
            str(row["faces"]),
            ", ".join(f"{stage} {s:.1f}s" for stage, s in stages),
        )
    out_console.print(table)
    total_s = sum(r["seconds"] for r in v["rows"])
    total_video = sum(r["duration_s"] or 0 for r in v["rows"])
    out_console.print(
        f"total {total_s:.1f} s for {total_video:.1f} s of video "
        f"({total_s / max(total_video, 1e-9):.2f} s per video-second); "
        f"model load {v['load_s']:.1f} s; "
        f"RSS after load {v['rss_loaded_mb']:.0f} MB ({v['private_loaded_mb']:.0f} MB private; "
        f"peak while loading {v['load_peak_rss_mb']:.0f} MB), peak {v['peak_rss_mb']:.0f} MB"
    )


def _growth_curve(settings: AnalyzeBenchSettings, base: dict[str, Any]) -> list[dict[str, Any]]:
    """One synthetic 720p video per length (real clips concatenated, cached), each analysed in
    its own process."""
    from evaluation.synthetic import concat_clips

    data = settings.data
    sources = [data / p for p in DEFAULT_BENCH_VIDEOS] + [data / "videos" / "liveportrait_d12.mp4"]
    curve = []
    for minutes in settings.growth:
        path = settings.growth_dir / f"synthetic_{minutes:g}min_720p.mp4"
        if not path.exists():
            out_console.print(f"writing {path} ...")
            concat_clips(sources, path, minutes * 60)
        r = run_isolated(_analyze_worker, {**base, "videos": [str(path)]})
        curve.append({"minutes": minutes, **r})
    return curve


def _print_growth(curve: list[dict[str, Any]]) -> None:
    g = Table(title="growth with video length (synthetic 720p, concatenated real clips)")
    for col in ("minutes", "s", "shots", "frames sampled", "peak RSS MB", "RSS vs first"):
        g.add_column(col, justify="right")
    first = curve[0]["peak_rss_mb"]
    for c in curve:
        row = c["rows"][0]
        g.add_row(
            f"{c['minutes']:g}",
            f"{row['seconds']:.1f}",
            str(row["shots"]),
            str(row["frames_sampled"]),
            f"{c['peak_rss_mb']:.0f}",
            f"{c['peak_rss_mb'] / first:.2f}",
        )
    out_console.print(g)
