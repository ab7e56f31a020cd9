"""The member trained by this project and shipped in the package (``sbi_lite0``): intact,
installable without a network, loaded strictly, and scoring real faces beside MesoNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.models.catalog import BUNDLED
from pipeline.models.checkpoint import file_sha256, load_checkpoint, read_state_dict
from pipeline.models.fetch import fetch_members
from pipeline.models.manifest import OPEN, ModelDirectory
from pipeline.models.registry import build_network

SBI = BUNDLED["sbi_lite0"]


def test_the_file_is_the_catalogued_one_and_small() -> None:
    assert file_sha256(SBI.weights) == SBI.sha256
    assert SBI.weights.stat().st_size <= 10 * 1024 * 1024
    state = read_state_dict(SBI.weights)
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    spec = SBI.spec()
    record = spec.training
    assert record is not None and "self-blended" in record.pseudo_fakes
    assert record.manipulations == ("original",)  # never trained on a fake
    assert record.init.startswith("ImageNet efficientnet_lite0")
    assert record.validation["fp16_max_abs_diff"] <= 1e-3
    assert "train_sbi_lite0.sh" in record.command or "dfd train" in record.command


def test_fetch_installs_it_offline_beside_mesonet(tmp_path: Path, shared_data: Path) -> None:
    directory = ModelDirectory(tmp_path / "models")
    directory.init("paper")
    manifest = directory.load()
    assert "sbi_lite0" in manifest.ensembles[OPEN]
    assert not directory.has_weights(manifest.member("sbi_lite0"))

    (spec,) = fetch_members(directory, "sbi_lite0")
    assert spec.training is not None and spec.version == SBI.spec().version
    path = directory.checkpoint_path(spec)
    assert path is not None
    net = build_network(spec)
    load_checkpoint(net, path, spec.sha256)

    # With MesoNet's weights too, `auto` runs the open ensemble: all five trained.
    fetch_members(directory, "mesonet", mirror=str(shared_data.parent / "weights"))
    name, specs = directory.load().resolve(directory)
    assert name == OPEN and {s.name for s in specs} >= {"sbi_lite0", "meso4_df"}

    # A real face: a probability, the same from the fp16 file as from its float32 upcast.
    from PIL import Image

    from pipeline.models.preprocess import crops_to_unit_batch, normalise

    crop = np.asarray(
        Image.open(shared_data / "deepfake/dfdc_crop_abarnvbtwb-000-00.png").convert("RGB")
    )
    x = normalise(
        crops_to_unit_batch([crop], spec.input_size, torch.device("cpu")), spec.mean, spec.std
    )
    with torch.no_grad():
        p = torch.sigmoid(net(x))
    assert p.shape == (1,) and 0.0 <= float(p) <= 1.0
