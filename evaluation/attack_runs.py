"""The attack run folder: the format ``batch.attack`` writes and the robustness report reads.

One owner for the layout, the attack's settings (what ``attack.json`` records) and the reading
rules, so the report never needs the code that ran the attack::

    RUN/attack.json              dataset, attack settings, analysis settings, models; created_at
    RUN/parts/part-*.parquet     result rows as they stream in (newest row per video wins)
    RUN/scores.parquet           one row per video, sorted by video_id (written at the end)
    RUN/examples/<slug>-*.png    clean, perturbation and attacked crops of the example faces

Every file is written atomically (temporary name, then rename), so a run that stops loses at most
the rows not yet flushed, and a rerun into the same folder resumes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import ConfigError, MissingFileError

NormName = Literal["inf", "1", "2"]
BlackBoxName = Literal["hopskipjump", "square"]
DefenceName = Literal["jpeg", "smoothing", "squeeze"]


CONFIG_FILE = "attack.json"
PARTS_DIR = "parts"
SCORES_FILE = "scores.parquet"
EXAMPLES_DIR = "examples"
#: Columns of an example row holding PNG bytes; :class:`PartWriter` writes them as files.
PNG_COLUMNS = ("example_clean_png", "example_perturbation_png", "example_attacked_png")


# ----------------------------------------------------------------------------------------------
# Settings


class AttackSettings(BaseModel):
    """What is done to each face (paper 4.1.3: PGD, eps 0.2, max_iter 5).

    ``eps`` and ``eps_step`` are in [0, 1] pixel units of the ``(3, S, S)`` crop, measured in the
    chosen norm over the whole crop. ``eps_step`` defaults to ART's 0.1 (the paper names only
    ``eps`` and ``max_iterations``).
    """

    model_config = ConfigDict(extra="forbid")

    norm: NormName = "inf"
    eps: float = Field(0.2, gt=0.0)
    eps_step: float = Field(0.1, gt=0.0)
    max_iter: int = Field(5, ge=1)
    #: ART's random restarts inside the eps ball (0: start from the clean crop, as ART's default).
    num_random_init: int = Field(0, ge=0)
    #: Faces per ART batch. Backpropagating through the five full-size members costs about
    #: 2.3 GB per face on CPU (`dfd bench attack`: 11.6 GB peak at 4 faces), hence 2.
    batch_size: int = Field(2, ge=1)
    #: Attack resolution; default: the largest member input size.
    input_size: int | None = Field(None, ge=16, le=1024)
    #: Craft on this member alone, score with the whole ensemble.
    transfer_from: str | None = None
    black_box: BlackBoxName | None = None
    #: Per-face query budget of the black-box attack: a hard cap for Square (whose ART version
    #: asks three times per iteration); HopSkipJump's iterations and gradient estimates are sized
    #: to about this many. Either way the count each face needed is recorded.
    max_queries: int = Field(1000, ge=10)
    #: The per-key rate limit the black-box query counts are set against (requests per minute).
    rate_per_min: int = Field(60, ge=1)
    defence: DefenceName | None = None
    jpeg_quality: int = Field(50, ge=1, le=95)
    smoothing_window: int = Field(3, ge=2)
    squeeze_bits: int = Field(4, ge=1, le=8)
    #: Faces with probability >= threshold count as "fake" for face-level success rates.
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    #: Seed of numpy's global generator before random parts of ART (random init, Square, HSJ).
    seed: int = 0

    @model_validator(mode="after")
    def _compatible(self) -> AttackSettings:
        if self.black_box is not None and self.transfer_from is not None:
            raise ValueError("a black-box attack has no surrogate member: drop transfer_from")
        if self.black_box == "hopskipjump" and self.norm == "1":
            raise ValueError("ART's HopSkipJump supports norm 2 or inf, not 1")
        return self

    def art_norm(self) -> float:
        return math.inf if self.norm == "inf" else float(self.norm)

    @property
    def kind(self) -> str:
        """``pgd``, ``transfer`` or the black-box attack's name."""
        if self.black_box is not None:
            return self.black_box
        return "transfer" if self.transfer_from else "pgd"

    def describe(self) -> str:
        what = self.black_box or "PGD"
        text = f"{what} norm-{self.norm} eps {self.eps:g}"
        if self.black_box is None:
            text += f" step {self.eps_step:g} x{self.max_iter}"
        else:
            text += f", <= {self.max_queries} queries/face"
        if self.transfer_from:
            text += f", crafted on {self.transfer_from}"
        if self.defence:
            text += f", defence {self.defence}"
        return text


# ----------------------------------------------------------------------------------------------
# Files


def check_or_write_config(out: Path, config: dict[str, Any]) -> None:
    """A run folder holds one attack: a rerun must ask for the same one to resume it."""
    path = out / CONFIG_FILE
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        fixed = ("dataset", "attack", "analysis", "models")
        changed = [k for k in fixed if old.get(k) != config.get(k)]
        if changed:
            raise ConfigError(
                f"{out} holds a run with different {', '.join(changed)}; resume it with the same "
                "options or choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    config = {**config, "created_at": datetime.now(UTC).isoformat()}
    atomic_write(path, (json.dumps(config, indent=2) + "\n").encode())


def read_config(out: Path) -> dict[str, Any]:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise MissingFileError(f"{path} not found: {out} is not an attack run folder")
    config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return config


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def slug(video_id: str) -> str:
    digest = hashlib.sha1(video_id.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', video_id)[-80:]}-{digest}"


class PartWriter:
    """Buffers result rows and writes them as atomically renamed Parquet parts."""

    def __init__(self, out: Path, flush_every: int, flush_s: float = math.inf) -> None:
        self.parts = out / PARTS_DIR
        self.examples = out / EXAMPLES_DIR
        self.parts.mkdir(parents=True, exist_ok=True)
        self.flush_every = flush_every
        self.flush_s = flush_s
        self.last_flush = time.perf_counter()
        self.ids: set[str] = set()
        self.buffer: list[dict[str, Any]] = []
        self.written = 0
        self.errors = 0

    def add(self, record: dict[str, Any]) -> None:
        record = dict(record)
        pngs = {c: record.pop(c, None) for c in PNG_COLUMNS}
        record["example"] = None
        if pngs["example_clean_png"] is not None:
            self.examples.mkdir(parents=True, exist_ok=True)
            name = slug(str(record["video_id"]))
            for column, data in pngs.items():
                suffix = column.removeprefix("example_").removesuffix("_png")
                atomic_write(self.examples / f"{name}-{suffix}.png", data)
            record["example"] = f"{EXAMPLES_DIR}/{name}"
        self.errors += record.get("error") is not None
        self.ids.add(str(record["video_id"]))
        self.buffer.append(record)
        if (
            len(self.buffer) >= self.flush_every
            or time.perf_counter() - self.last_flush >= self.flush_s
        ):
            self.flush()

    def flush(self) -> None:
        self.last_flush = time.perf_counter()
        if not self.buffer:
            return
        import pandas as pd

        frame = pd.DataFrame(self.buffer)
        name = f"part-{time.time_ns():020d}-{os.getpid()}.parquet"
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write(self.parts / name, buffer.getvalue())
        self.written += len(self.buffer)
        self.buffer.clear()


def consolidate(out: Path) -> Path:
    """Write ``scores.parquet``: one row per video, sorted by ``video_id``."""
    frame = read_scores(out)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    path = Path(out) / SCORES_FILE
    atomic_write(path, buffer.getvalue())
    return path


def read_scores(out: Path) -> Any:
    """The run's rows as one pandas frame, from the part files (so also mid-run): the newest row
    per ``video_id`` (retries win), sorted by ``video_id``."""
    import pandas as pd

    files = sorted((Path(out) / PARTS_DIR).glob("part-*.parquet"))
    if not files:
        return pd.DataFrame()
    frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return frame.drop_duplicates("video_id", keep="last").sort_values("video_id", ignore_index=True)
