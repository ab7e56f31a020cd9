"""What an attack run did: the figures of one run folder written by :mod:`batch.attack`.

Per run (format: :mod:`evaluation.attack_runs`): balanced accuracy and AUC clean versus attacked,
attack success rate per video and per face, perturbation size and visibility, black-box query
counts against a per-key rate limit, and purification defences; plus the example faces the run
kept. :mod:`evaluation.robustness` lays several runs out in paper Table 3's layout.

Conventions are those of :mod:`evaluation.metrics`: label 1 = fake, a video is predicted fake when
``score >= threshold``, failed rows (``error`` set) and rows without a face (no score) are excluded
from every metric and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from evaluation.attack_runs import AttackSettings, read_config, read_scores
from evaluation.group_metrics import compute_metrics


class ExampleFace(BaseModel):
    """One face of the strip: files relative to the run folder, scores in [0, 1]."""

    model_config = ConfigDict(frozen=True)

    video_id: str
    label: int
    clean_score: float
    attacked_score: float
    amplification: float
    clean: str
    perturbation: str
    attacked: str


class RunSummary(BaseModel):
    """The figures of one attack run (one dataset, one attack), computed from its Parquet rows.

    BA and AUC are over videos with a score (rows that failed or had no face are excluded and
    counted). ``attack_success_rate``: share of the fake videos detected before the attack
    (clean score >= threshold) that score below the threshold after it (the attack's target is
    "real"). ``face_success_rate``: the same over faces of every video. Perturbation figures are
    means over attacked faces; PSNR leaves out faces the attack did not change (infinite PSNR).
    """

    model_config = ConfigDict(frozen=True)

    run: str
    path: str
    dataset: str
    kind: str
    attack: str
    norm: str
    eps: float
    eps_step: float
    max_iter: int
    transfer_from: str | None
    black_box: str | None
    defence: str | None
    rate_per_min: int
    threshold: float
    untrained_members: list[str]
    n_rows: int
    n_errors: int
    n_no_face: int
    n_scored: int
    n_faces: int
    ba_clean: float | None
    ba_attacked: float | None
    auc_clean: float | None
    auc_attacked: float | None
    undefined: str
    n_fakes_detected: int
    attack_success_rate: float | None
    face_success_rate: float | None
    l1: float | None
    l2: float | None
    linf: float | None
    psnr: float | None
    ssim: float | None
    queries_per_face: float | None
    queries_per_video: float | None
    minutes_per_video: float | None
    queries_total: int
    ba_defended_clean: float | None
    ba_defended_attacked: float | None
    examples: list[ExampleFace]


#: Columns a summary reads; a run with no row yet (or error rows only) lacks some.
_SUMMARY_COLUMNS = (
    "video_id", "label", "clean_score", "attacked_score", "error", "n_faces",
    "n_faces_fake_clean", "n_faces_flipped", "n_unchanged", "queries_total", "l1_mean",
    "l2_mean", "linf_mean", "psnr_mean", "ssim_mean", "defended_clean_score",
    "defended_attacked_score", "example",
)  # fmt: skip


def _read_run(run_dir: Path) -> tuple[dict[str, Any], Any]:
    config = read_config(run_dir)
    frame = read_scores(run_dir)
    for column in _SUMMARY_COLUMNS:
        if column not in frame:
            frame[column] = None
    return config, frame


def _ba_auc(
    frame: Any, column: str, dataset: str, threshold: float
) -> tuple[float | None, float | None, str]:
    if column not in frame or frame[column].isna().all():
        return None, None, f"no {column}"
    records = [
        {"dataset": dataset, "label": int(r["label"]), "score": r[column], "error": r["error"]}
        for r in frame.to_dict("records")
    ]
    row = compute_metrics(records, ("dataset",), threshold=threshold, n_boot=0).rows[0]
    return row.balanced_accuracy, row.auc, "; ".join(sorted(set(row.undefined.values())))


def _weighted(frame: Any, column: str, weights: Any) -> float | None:
    values = frame[column].to_numpy(dtype=np.float64) if column in frame else np.zeros(0)
    w = np.asarray(weights, dtype=np.float64)
    keep = np.isfinite(values) & (w > 0)
    if not keep.any():
        return None
    return float((values[keep] * w[keep]).sum() / w[keep].sum())


def summarize_run(run_dir: Path, threshold: float = 0.5) -> RunSummary:
    """Figures of one run folder written by :func:`batch.attack.run_attack`.

    Raises:
        MissingFileError: ``run_dir`` has no ``attack.json``.
    """
    run_dir = Path(run_dir)
    config, frame = _read_run(run_dir)
    attack = config["attack"]
    dataset = str(config["dataset"])
    failed = frame["error"].notna() if "error" in frame else np.zeros(len(frame), bool)
    ok = frame[~failed]
    scored = ok[ok["clean_score"].notna()]
    n_faces = ok["n_faces"].fillna(0).to_numpy() if "n_faces" in ok else np.zeros(len(ok))
    ba_c, auc_c, why_c = _ba_auc(frame, "clean_score", dataset, threshold)
    ba_a, auc_a, why_a = _ba_auc(frame, "attacked_score", dataset, threshold)
    fakes = scored[scored["label"] == 1]
    detected = fakes[fakes["clean_score"] >= threshold]
    asr = float((detected["attacked_score"] < threshold).mean()) if len(detected) else None
    fake_faces = float(ok["n_faces_fake_clean"].fillna(0).sum()) if len(ok) else 0.0
    flipped = float(ok["n_faces_flipped"].fillna(0).sum()) if len(ok) else 0.0
    changed = n_faces - (ok["n_unchanged"].fillna(0).to_numpy() if len(ok) else 0)
    queries_total = int(ok["queries_total"].fillna(0).sum()) if len(ok) else 0
    black_box = attack.get("black_box")
    with_faces = ok[ok["n_faces"].fillna(0) > 0] if len(ok) else ok
    per_video = queries_total / len(with_faces) if black_box and len(with_faces) else None
    rate = int(attack.get("rate_per_min", 60))
    ba_dc = ba_da = None
    if attack.get("defence"):
        ba_dc, _, _ = _ba_auc(frame, "defended_clean_score", dataset, threshold)
        ba_da, _, _ = _ba_auc(frame, "defended_attacked_score", dataset, threshold)
    return RunSummary(
        run=run_dir.name,
        path=str(run_dir),
        dataset=dataset,
        kind=black_box or ("transfer" if attack.get("transfer_from") else "pgd"),
        attack=_describe(attack),
        norm=str(attack["norm"]),
        eps=float(attack["eps"]),
        eps_step=float(attack["eps_step"]),
        max_iter=int(attack["max_iter"]),
        transfer_from=attack.get("transfer_from"),
        black_box=black_box,
        defence=attack.get("defence"),
        rate_per_min=rate,
        threshold=threshold,
        untrained_members=[m["name"] for m in config["models"] if m["weights"] != "trained"],
        n_rows=len(frame),
        n_errors=int(np.asarray(failed).sum()),
        n_no_face=int(len(ok) - len(scored)),
        n_scored=len(scored),
        n_faces=int(n_faces.sum()),
        ba_clean=ba_c,
        ba_attacked=ba_a,
        auc_clean=auc_c,
        auc_attacked=auc_a,
        undefined="; ".join(sorted({w for w in (why_c, why_a) if w})),
        n_fakes_detected=len(detected),
        attack_success_rate=asr,
        face_success_rate=flipped / fake_faces if fake_faces else None,
        l1=_weighted(ok, "l1_mean", n_faces),
        l2=_weighted(ok, "l2_mean", n_faces),
        linf=_weighted(ok, "linf_mean", n_faces),
        psnr=_weighted(ok, "psnr_mean", changed),
        ssim=_weighted(ok, "ssim_mean", n_faces),
        queries_per_face=queries_total / n_faces.sum() if black_box and n_faces.sum() else None,
        queries_per_video=per_video,
        minutes_per_video=per_video / rate if per_video is not None else None,
        queries_total=queries_total,
        ba_defended_clean=ba_dc,
        ba_defended_attacked=ba_da,
        examples=_examples(frame),
    )


def _examples(frame: Any) -> list[ExampleFace]:
    """The example faces of the run's rows (those with an ``example`` file prefix)."""
    examples: list[ExampleFace] = []
    if "example" not in frame:
        return examples
    for r in frame[frame["example"].notna()].to_dict("records"):
        prefix = str(r["example"])
        examples.append(
            ExampleFace(
                video_id=str(r["video_id"]),
                label=int(r["label"]),
                clean_score=float(r["example_clean_score"]),
                attacked_score=float(r["example_attacked_score"]),
                amplification=float(r["example_amplification"]),
                clean=f"{prefix}-clean.png",
                perturbation=f"{prefix}-perturbation.png",
                attacked=f"{prefix}-attacked.png",
            )
        )
    return examples


def _describe(attack: dict[str, Any]) -> str:
    return AttackSettings.model_validate(attack).describe()
