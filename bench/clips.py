"""Benchmark videos: short clips cut from the face videos of the shared test media folder
(``../shared/data``), with their labels, as a ``csv`` dataset (``dfd bench evaluate``)."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ConfigError


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
