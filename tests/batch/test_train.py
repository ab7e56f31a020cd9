"""``dfd train`` (``batch.train``) on local Ray: two Ray Train workers fine-tune a real MesoNet
member on faces of the FaceForensics++ clips in ../shared/data, resume, and reload strictly; a
tiny paper member learns a synthetic separable task; bad input fails before anything is written.
"""

from __future__ import annotations

import io
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from batch.faces import FaceExtractionConfig, extract_faces
from batch.faces_folder import FACE_SCHEMA, FACES_FILE, PARTS_DIR
from batch.train import TRAIN_FILE, TrainConfig, _check_room, latest_checkpoint, train
from batch.train_data import plan_faces, prepare_batch
from batch.train_member import FP16_TOLERANCE, _fp16_gap
from evaluation.model_card import render_model_card
from pipeline.errors import BadInputError, ConfigError
from pipeline.models.catalog import TRAINABLE
from pipeline.models.checkpoint import load_checkpoint, read_state_dict
from pipeline.models.fetch import fetch_members
from pipeline.models.manifest import ModelDirectory
from pipeline.models.registry import build_network
from pipeline.models.spec import MemberSpec, tiny_members

#: (file under deepfake/, label, manipulation, split): both classes on both sides, whole videos.
FFPP = [
    ("ffpp_c23_004.mp4", 0, "", "train"),
    ("ffpp_c23_004_982.mp4", 1, "NeuralTextures", "train"),
    ("ffpp_c23_519.mp4", 0, "", "train"),
    ("ffpp_c23_519_515.mp4", 1, "Deepfakes", "train"),
    ("ffpp_c23_634.mp4", 0, "", "val"),
    ("ffpp_c23_634_660.mp4", 1, "FaceSwap", "val"),
]


@pytest.fixture(scope="module")
def ffpp_faces(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """Faces of the six FF++ clips, 6 frames each, extracted in-process (the same code as
    analysis)."""
    base = tmp_path_factory.mktemp("train-data")
    lines = ["path,label,manipulation,video_id,split"]
    lines += [f"{shared_data}/deepfake/{f},{y},{m},{f},{s}" for f, y, m, s in FFPP]
    (base / "ffpp.csv").write_text("\n".join(lines) + "\n")
    config = FaceExtractionConfig(
        dataset="csv", root=base / "ffpp.csv", out=base / "faces", max_frames=6
    )
    summary = extract_faces(config, local=True)
    assert summary.faces >= 30 and summary.errors == 0
    return config.out


@pytest.fixture
def mesonet_dir(tmp_path: Path, shared_data: Path) -> ModelDirectory:
    """A model directory with the real MesoNet weights (the importer of the real-detectors
    issue, from the local mirror laid out like upstream)."""
    directory = ModelDirectory(tmp_path / "models")
    directory.init("tiny", input_size=32)
    fetch_members(directory, "meso4_df", mirror=str(shared_data.parent / "weights"))
    return directory


def _config(faces: Path, directory: ModelDirectory, out: Path, **kw: object) -> TrainConfig:
    values: dict[str, object] = {
        "faces": faces,
        "model_dir": directory.root,
        "out": out,
        "workers": 2,
        "cpus_per_worker": 0.5,
        "batch_size": 8,
        "torch_threads": 1,
        **kw,
    }
    return TrainConfig.model_validate(values)


@pytest.mark.usefixtures("ray_local")
def test_two_workers_fine_tune_mesonet_then_resume(
    ffpp_faces: Path, mesonet_dir: ModelDirectory, tmp_path: Path
) -> None:
    before = mesonet_dir.load().member("meso4_df")
    shutil.copyfile(mesonet_dir.root / "meso4_df.safetensors", tmp_path / "original.safetensors")
    config = _config(
        ffpp_faces, mesonet_dir, tmp_path / "run", member="meso4_df", epochs=1, lr=1e-3,
        augment=False,
    )  # fmt: skip
    first = train(config)
    assert [int(h["epoch"]) for h in first.history] == [1]
    assert 0.0 <= first.best["val_auc"] <= 1.0 and first.best["val_frames"] >= 10

    # A new version of the member, trained from its real weights, loads with the strict loader.
    spec = mesonet_dir.load().member("meso4_df")
    assert spec.version == f"{before.version}.ft1" and spec.sha256 != before.sha256
    assert spec.training is not None
    assert spec.training.init.startswith(f"member meso4_df {before.version}")
    assert spec.training.videos == 4 and spec.training.recipe["workers"] == 2
    assert spec.training.validation["auc"] == first.best["val_auc"]
    path = mesonet_dir.checkpoint_path(spec)
    assert path is not None
    load_checkpoint(build_network(spec), path, spec.sha256)
    card = render_model_card(mesonet_dir.root)
    assert "meso4_df" in card and "Trained here by dfd train" in card

    # Resume: the run continues from its saved step.
    saved = latest_checkpoint(config.out)
    assert saved is not None
    step = json.loads((saved / "state.json").read_text())["step"]
    resumed = train(config.model_copy(update={"epochs": 2}), resume=True)
    assert [int(h["epoch"]) for h in resumed.history] == [1, 2]
    assert resumed.history[1]["step"] > step == resumed.history[0]["step"]
    # The loss on the training faces went down: measured on the same pictures, with batch
    # statistics as the optimiser saw them (the running means of two steps an epoch are too
    # noisy to compare, and a few steps move the batch-norm running averages more than the loss).
    newest = latest_checkpoint(config.out)
    assert newest is not None
    trained = load_file(str(newest / "model.safetensors"))
    original = read_state_dict(tmp_path / "original.safetensors")
    assert _train_loss(ffpp_faces, before, trained) < _train_loss(ffpp_faces, before, original)
    # The resumed run started from the run's checkpoint, not from the member's new version.
    assert mesonet_dir.load().member("meso4_df").version == f"{before.version}.ft2"


def _train_loss(faces: Path, spec: MemberSpec, state: dict[str, torch.Tensor]) -> float:
    """BCE of ``state`` on the training faces of ``faces`` as one batch (batch statistics), no
    augmentation."""
    plan = plan_faces(faces)
    xs, ys = [], []
    for part in plan.parts:
        batch = {k: np.asarray(v, dtype=object) for k, v in pq.read_table(part).to_pydict().items()}
        out = prepare_batch(
            batch, spec=spec.model_dump(mode="json"), extracted_margin=plan.margin,
            split="train", train=False, augment=False, cutout_p=0.0, sbi=False, seed=0,
        )  # fmt: skip
        xs.append(out["x"])
        ys.append(out["label"])
    net = build_network(spec)
    net.load_state_dict(state, strict=True)
    net.train()  # batch statistics; the copy is thrown away, so its running averages do not matter
    with torch.no_grad():
        logits = net(torch.from_numpy(np.concatenate(xs)))
    return float(F.binary_cross_entropy_with_logits(logits, torch.from_numpy(np.concatenate(ys))))


def _synthetic_faces(
    folder: Path, per_class: int, size: int = 40, labels: tuple[int, ...] = (0, 1)
) -> None:
    """A faces folder whose fakes carry a bright square and reals do not: separable."""
    rng = np.random.default_rng(0)
    rows: dict[str, list[object]] = {f.name: [] for f in FACE_SCHEMA}
    for label in labels:
        for i in range(per_class):
            video = f"{label}-{i}"
            crop = rng.integers(40, 120, (size, size, 3), dtype=np.uint8)
            if label:
                crop[10:30, 10:30] = 230
            buf = io.BytesIO()
            Image.fromarray(crop).save(buf, format="PNG")
            values = {
                "video_id": video, "dataset": "synthetic", "path": video, "label": label,
                "manipulation": "square" if label else "original",
                "split": "val" if i % 4 == 0 else "train", "split_source": "dataset",
                "kind": "video", "status": "face", "frame_index": 0, "time_s": 0.0,
                "landmarks": None, "crop_png": buf.getvalue(), "width": size, "height": size,
                "finished_at": datetime.now(UTC),
            }  # fmt: skip
            for name in rows:
                rows[name].append(values.get(name))
    (folder / PARTS_DIR).mkdir(parents=True)
    pq.write_table(pa.table(rows, schema=FACE_SCHEMA), folder / PARTS_DIR / "part-0.parquet")
    (folder / FACES_FILE).write_text(json.dumps({"fingerprint": {"faces": {"margin": 1.3}}}))


@pytest.mark.usefixtures("ray_local")
def test_tiny_paper_member_learns_a_separable_task(tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    _synthetic_faces(faces, per_class=32)
    directory = ModelDirectory(tmp_path / "models")
    directory.init("tiny", input_size=32)
    config = _config(
        faces, directory, tmp_path / "run", member="m1_effb4", epochs=4, lr=3e-3, workers=1,
        cpus_per_worker=1.0, augment=False, save_as="m1_square",
    )  # fmt: skip
    summary = train(config)
    # Fakes score higher than reals: labels, loss and metric point the same way.
    assert summary.best["val_auc"] >= 0.95
    manifest = directory.load()
    assert manifest.member("m1_square").training is not None
    assert manifest.member("m1_effb4").checkpoint is None  # the original stays as it was


def test_prepare_batch_pairs_every_real_face_with_its_self_blended_fake(ffpp_faces: Path) -> None:
    plan = plan_faces(ffpp_faces)
    table = pq.read_table(plan.parts[0]).to_pydict()
    batch = {k: np.asarray(v, dtype=object) for k, v in table.items()}
    member = TRAINABLE["sbi_lite0"].model_copy(update={"input_size": 48})
    common = {
        "spec": member.model_dump(mode="json"), "extracted_margin": plan.margin,
        "augment": True, "cutout_p": 0.5, "seed": 3,
    }  # fmt: skip
    rows = [i for i in range(len(batch["split"])) if batch["split"][i] == "train"]
    reals = sum(1 for i in rows if batch["label"][i] == 0)
    out = prepare_batch(batch, split="train", train=True, sbi=True, **common)
    # Fakes of the folder are not trained on; each real face comes with one pseudo-fake.
    assert out["x"].shape == (2 * reals, 3, 48, 48) and out["x"].dtype == np.float32
    assert out["label"].tolist() == [0.0, 1.0] * reals
    # Validation pictures are the same every epoch.
    val_a = prepare_batch(batch, split="val", train=False, sbi=True, **common)
    val_b = prepare_batch(batch, split="val", train=False, sbi=True, **common)
    np.testing.assert_array_equal(val_a["x"], val_b["x"])


def test_bad_input_fails_before_anything_is_written(
    ffpp_faces: Path, mesonet_dir: ModelDirectory, tmp_path: Path
) -> None:
    manifest_bytes = mesonet_dir.manifest_path.read_bytes()
    files = sorted(p.name for p in mesonet_dir.root.iterdir())

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / FACES_FILE).write_text("{}")
    with pytest.raises(BadInputError, match="no crops"):
        train(_config(empty, mesonet_dir, tmp_path / "r1", member="meso4_df"))

    with pytest.raises(ConfigError, match="not a faces folder"):
        train(_config(tmp_path, mesonet_dir, tmp_path / "r2", member="meso4_df"))

    fakes_only = tmp_path / "fakes"
    _synthetic_faces(fakes_only, per_class=4, labels=(1,))
    with pytest.raises(BadInputError, match="only one class"):
        train(_config(fakes_only, mesonet_dir, tmp_path / "r3", member="meso4_df"))
    with pytest.raises(BadInputError, match="--sbi makes fakes from real faces"):
        train(_config(fakes_only, mesonet_dir, tmp_path / "r3", member="meso4_df", sbi=True))
    with pytest.raises(ConfigError, match=r"unknown member 'nope'.*sbi_lite0"):
        train(_config(ffpp_faces, mesonet_dir, tmp_path / "r4", member="nope"))

    # --resume of a folder of another run (other member and recipe).
    other = tmp_path / "other"
    other.mkdir()
    (other / TRAIN_FILE).write_text(json.dumps({"run_id": "0123", "member": "m1_effb4"}))
    with pytest.raises(ConfigError, match="another recipe"):
        train(_config(ffpp_faces, mesonet_dir, other, member="meso4_df"), resume=True)
    with pytest.raises(ConfigError, match="not a training run"):
        train(_config(ffpp_faces, mesonet_dir, tmp_path, member="meso4_df"), resume=True)

    assert mesonet_dir.manifest_path.read_bytes() == manifest_bytes
    assert sorted(p.name for p in mesonet_dir.root.iterdir()) == files


def test_starting_points_are_checked(
    ffpp_faces: Path, mesonet_dir: ModelDirectory, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, bad)
    with pytest.raises(Exception, match="does not fit"):
        train(_config(ffpp_faces, mesonet_dir, tmp_path / "r", member="meso4_df", init=bad))
    with pytest.raises(ConfigError, match="not the architecture"):
        train(_config(ffpp_faces, mesonet_dir, tmp_path / "r", member="m1_effb4",
                      from_member="meso4_df"))  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_fp16_gap_is_measured() -> None:
    spec = tiny_members(32)[0]
    state = build_network(spec).state_dict()
    assert 0.0 <= _fp16_gap(spec, state, torch.rand(4, 3, 32, 32)) <= FP16_TOLERANCE


def test_workers_that_would_leave_no_cpu_for_data_are_refused(tmp_path: Path) -> None:
    config = TrainConfig(faces=tmp_path, member="x", out=tmp_path, workers=2, cpus_per_worker=1)
    with pytest.raises(ConfigError, match="leave no room for the data tasks"):
        _check_room(config, 2.0)
    _check_room(config, 4.0)
