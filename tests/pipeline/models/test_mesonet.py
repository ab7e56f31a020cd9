"""MesoNet rebuilt in torch against the Keras originals, and the Keras weights importer.

The golden values are the original Keras architectures' outputs on six real faces
(``shared/weights/golden``, see ``PROVENANCE.md``); the weights are upstream's own files, read
from ``../shared/weights`` and never copied into the repository.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from pipeline.errors import CheckpointError, ConfigError
from pipeline.models.backends import OnnxRunner, OpenVinoRunner, export_onnx
from pipeline.models.catalog import catalog_specs
from pipeline.models.importers.base import ImportedMember, import_format
from pipeline.models.importers.mesonet import import_mesonet
from pipeline.models.mesonet import Meso4, MesoInception4, mesonet_spec
from pipeline.models.outputs import DetectorNet
from pipeline.models.registry import build_network
from tests.conftest import SHARED_DATA

#: Shared real weights, beside ``shared/data`` (``$DFD_SHARED_DATA/../weights``).
WEIGHTS = SHARED_DATA.parent / "weights"
#: Upstream file stem -> variant.
FILES = {
    "Meso4_DF": "meso4",
    "Meso4_F2F": "meso4",
    "MesoInception_DF": "mesoinception4",
    "MesoInception_F2F": "mesoinception4",
}
#: PROVENANCE.md: a correct importer reproduces every golden value to within this.
GOLDEN_ATOL = 1e-5


# --- helpers shared with test_fetch ---------------------------------------------------------


def weights_or_skip() -> Path:
    """The shared weights folder; skips the test where this checkout has none beside it."""
    if not (WEIGHTS / "mesonet").is_dir() or not (WEIGHTS / "golden" / "mesonet.json").is_file():
        pytest.skip(f"MesoNet weights not found at {WEIGHTS} (set DFD_SHARED_DATA)")
    return WEIGHTS


def golden_batch(weights: Path) -> tuple[list[str], Tensor, dict[str, np.ndarray]]:
    """``(input names, (6, 3, 256, 256) float in [0, 1], {file stem: (6,) Keras P(real)})``."""
    golden = json.loads((weights / "golden" / "mesonet.json").read_text())
    names = sorted(golden["inputs"])
    pixels = [
        np.asarray(Image.open(weights / "golden" / "inputs" / n).convert("RGB")) for n in names
    ]
    batch = torch.from_numpy(np.stack(pixels).astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    expected = {
        stem: np.array([values[n] for n in names], dtype=np.float64)
        for stem, values in golden["models"].items()
    }
    return names, batch.contiguous(), expected


def p_real(fake_logits: Tensor | np.ndarray) -> np.ndarray:
    """DetectorNet's ``(N,)`` fake logit ``z`` -> P(real) = sigmoid(-z), as float64."""
    z = np.asarray(fake_logits.detach() if isinstance(fake_logits, Tensor) else fake_logits)
    return 1.0 / (1.0 + np.exp(z.astype(np.float64)))


def loaded_net(imported: ImportedMember) -> DetectorNet:
    net = build_network(imported.spec)
    net.load_state_dict(imported.state, strict=True)
    return net


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights() -> Path:
    return weights_or_skip()


@pytest.fixture(scope="module")
def golden(weights: Path) -> tuple[list[str], Tensor, dict[str, np.ndarray]]:
    return golden_batch(weights)


@pytest.fixture(scope="module")
def imported(weights: Path) -> dict[str, ImportedMember]:
    """Every upstream file converted once, its variant inferred from the file."""
    return {
        stem: import_format("mesonet-keras", weights / "mesonet" / f"{stem}.h5", stem.lower())
        for stem in FILES
    }


# --- the networks ---------------------------------------------------------------------------


@pytest.mark.parametrize("stem", list(FILES))
def test_torch_eager_matches_keras(
    stem: str,
    imported: dict[str, ImportedMember],
    golden: tuple[list[str], Tensor, dict[str, np.ndarray]],
) -> None:
    _, batch, expected = golden
    member = imported[stem]
    assert member.spec.architecture == FILES[stem]
    with torch.no_grad():
        got = p_real(loaded_net(member)(batch))
    np.testing.assert_allclose(got, expected[stem], rtol=0, atol=GOLDEN_ATOL)


@pytest.mark.parametrize("stem", list(FILES))
def test_onnx_runtime_and_openvino_match_keras(
    stem: str,
    tmp_path: Path,
    imported: dict[str, ImportedMember],
    golden: tuple[list[str], Tensor, dict[str, np.ndarray]],
) -> None:
    pytest.importorskip("openvino")
    _, batch, expected = golden
    member = imported[stem]
    path = export_onnx(loaded_net(member), member.spec, tmp_path / f"{stem}.onnx")
    for runner in (OnnxRunner(path, threads=1), OpenVinoRunner(path, threads=1)):
        got = p_real(runner(batch))
        np.testing.assert_allclose(
            got, expected[stem], rtol=0, atol=GOLDEN_ATOL, err_msg=runner.name
        )
        # The batch axis is dynamic: one face alone scores as it does in the batch.
        np.testing.assert_allclose(p_real(runner(batch[2:3])), got[2:3], rtol=0, atol=1e-6)


def test_batched_equals_single_and_empty_batch(
    imported: dict[str, ImportedMember], golden: tuple[list[str], Tensor, dict[str, np.ndarray]]
) -> None:
    _, batch, _ = golden
    net = loaded_net(imported["MesoInception_DF"])
    with torch.no_grad():
        together = net(batch)
        alone = torch.cat([net(batch[i : i + 1]) for i in range(len(batch))])
        empty = net(batch[:0])
    torch.testing.assert_close(alone, together, rtol=0, atol=1e-5)
    assert together.shape == (len(batch),)
    assert empty.shape == (0,)


@pytest.mark.parametrize("cls", [Meso4, MesoInception4])
@pytest.mark.parametrize("size", [256, 100])
def test_raw_network_gives_one_logit_per_face(cls: type[nn.Module], size: int) -> None:
    out = cls(size).eval()(torch.rand(2, 3, size, size))
    assert out.shape == (2, 1)


def test_pooling_takes_the_windows_of_keras_same_padding() -> None:
    # Keras 'same' pooling with stride = size pads bottom/right only, and never picks the pad.
    x = torch.randn(1, 2, 7, 7)
    keras_same = nn.functional.max_pool2d(
        nn.functional.pad(x, (0, 1, 0, 1), value=float("-inf")), 2
    )
    torch.testing.assert_close(Meso4().pool1(x), keras_same)


def test_spec_is_upstream_preprocessing_and_output() -> None:
    spec = mesonet_spec("meso4_df", "meso4")
    assert spec.architecture == "meso4"
    assert (spec.input_size, spec.resize, spec.crop_margin) == (256, "stretch", 1.3)
    assert spec.mean == (0.0, 0.0, 0.0) and spec.std == (1.0, 1.0, 1.0)
    assert (spec.output, spec.num_classes, spec.licence) == ("real-logit", 1, "Apache-2.0")
    assert spec.description.startswith("MesoNet (Afchar et al., WIFS 2018)")
    assert mesonet_spec("x", "mesoinception4").architecture == "mesoinception4"
    assert [s.architecture for s in catalog_specs("mesonet")] == [*FILES.values()]
    with pytest.raises(ConfigError, match="unknown MesoNet variant 'meso5'"):
        mesonet_spec("x", "meso5")


def test_explicit_variant_gives_the_inferred_conversion(
    weights: Path, imported: dict[str, ImportedMember]
) -> None:
    member = import_mesonet(weights / "mesonet" / "Meso4_F2F.h5", "m", "meso4")
    assert member.spec.name == "m"
    assert member.state.keys() == imported["Meso4_F2F"].state.keys()
    for key, value in member.state.items():
        assert torch.equal(value, imported["Meso4_F2F"].state[key]), key


# --- bad files ------------------------------------------------------------------------------


def _edited(weights: Path, tmp_path: Path, stem: str, edit: Callable[[Any], None]) -> Path:
    """A copy of upstream ``stem``.h5 in ``tmp_path`` changed by ``edit(h5py root)``."""
    path = tmp_path / f"{stem}_edited.h5"
    shutil.copyfile(weights / "mesonet" / f"{stem}.h5", path)
    path.chmod(0o644)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _layer_names(f: Any) -> list[bytes]:
    return [bytes(n) for n in f.attrs["layer_names"]]


def _drop_layer(name: str) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        del f[name]
        f.attrs["layer_names"] = np.array([n for n in _layer_names(f) if n != name.encode()])

    return edit


def _add_layer(name: str, arrays: dict[str, np.ndarray]) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        group = f.create_group(name)
        group.attrs["weight_names"] = np.array([f"{name}/{k}:0".encode() for k in arrays])
        for key, array in arrays.items():
            group.create_dataset(f"{name}/{key}:0", data=array)
        f.attrs["layer_names"] = np.array([*_layer_names(f), name.encode()])

    return edit


def _reshape(layer: str, weight: str, shape: tuple[int, ...]) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        key = f"{layer}/{weight}:0"
        del f[layer][key]
        f[layer].create_dataset(key, data=np.zeros(shape, dtype=np.float32))

    return edit


def _drop_weight(layer: str, weight: str) -> Callable[[Any], None]:
    def edit(f: Any) -> None:
        key = f"{layer}/{weight}:0"
        del f[layer][key]
        names = [bytes(n) for n in f[layer].attrs["weight_names"]]
        f[layer].attrs["weight_names"] = np.array([n for n in names if n != key.encode()])

    return edit


def test_a_file_that_is_not_hdf5_is_named(tmp_path: Path) -> None:
    path = tmp_path / "weights.h5"
    path.write_bytes(b"<html>404: Not Found</html>")
    with pytest.raises(CheckpointError, match=r"weights\.h5: cannot read the Keras HDF5 file"):
        import_mesonet(path, "m", None)


def test_a_truncated_file_is_named(weights: Path, tmp_path: Path) -> None:
    data = (weights / "mesonet" / "Meso4_DF.h5").read_bytes()
    path = tmp_path / "Meso4_DF.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"Meso4_DF\.h5: cannot read .*truncated") as info:
        import_mesonet(path, "m", "meso4")
    assert "\n" not in str(info.value)


def test_hdf5_without_keras_layers_is_named(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"other\.h5: HDF5 but not a Keras weights file"):
        import_mesonet(path, "m", None)


def test_a_keras_file_of_another_network_is_named(tmp_path: Path) -> None:
    path = tmp_path / "dense_only.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"input_1"])
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        _add_layer("dense_1", {"kernel": np.zeros((4, 1), np.float32)})(f)
    with pytest.raises(CheckpointError, match=r"dense_only\.h5: layer dense_1 lacks bias"):
        import_mesonet(path, "m", None)
    with h5py.File(path, "r+") as f:
        _add_layer("dense_2", {"kernel": np.ones((1, 1), "f4"), "bias": np.ones(1, "f4")})(f)
        _drop_layer("dense_1")(f)
    with pytest.raises(CheckpointError, match=r"dense_only\.h5: not a MesoNet weights file"):
        import_mesonet(path, "m", None)


@pytest.mark.parametrize(
    ("stem", "layer", "variant"),
    [
        ("Meso4_DF", "batch_normalization_7", None),
        ("Meso4_DF", "batch_normalization_7", "meso4"),
        ("Meso4_F2F", "dense_4", None),
        # The first of the file's convolutions: no gap in the numbers, told by the shapes.
        ("MesoInception_DF", "conv2d_1", None),
    ],
)
def test_a_missing_layer_is_named(
    weights: Path, tmp_path: Path, stem: str, layer: str, variant: str | None
) -> None:
    path = _edited(weights, tmp_path, stem, _drop_layer(layer))
    with pytest.raises(CheckpointError) as info:
        import_mesonet(path, "m", variant)
    message = str(info.value)
    assert str(path) in message
    assert f"missing layer {layer}:" in message


def test_a_missing_weight_is_named(weights: Path, tmp_path: Path) -> None:
    path = _edited(weights, tmp_path, "Meso4_DF", _drop_weight("batch_normalization_6", "gamma"))
    with pytest.raises(
        CheckpointError, match=r"_edited\.h5: layer batch_normalization_6 lacks gamma"
    ):
        import_mesonet(path, "m", None)


@pytest.mark.parametrize(
    ("stem", "layer", "weight", "shape"),
    [
        ("Meso4_DF", "conv2d_6", "kernel", (5, 5, 8, 4)),
        ("Meso4_DF", "dense_3", "kernel", (16, 1024)),  # transposed
        ("MesoInception_DF", "conv2d_5", "kernel", (3, 3, 4, 2)),
        ("MesoInception_DF", "batch_normalization_2", "moving_variance", (11,)),
    ],
)
def test_a_misshapen_layer_is_named(
    weights: Path, tmp_path: Path, stem: str, layer: str, weight: str, shape: tuple[int, ...]
) -> None:
    path = _edited(weights, tmp_path, stem, _reshape(layer, weight, shape))
    with pytest.raises(CheckpointError) as info:
        import_mesonet(path, "m", None)
    message = str(info.value)
    assert str(path) in message
    assert f"layer {layer} {weight} has shape {shape}" in message


@pytest.mark.parametrize(
    ("stem", "variant", "found", "layer"),
    [
        ("Meso4_DF", "mesoinception4", "Meso4", "conv2d_5"),
        ("MesoInception_F2F", "meso4", "MesoInception4", "conv2d_1"),
    ],
)
def test_a_file_of_the_other_variant_is_refused(
    weights: Path, stem: str, variant: str, found: str, layer: str
) -> None:
    path = weights / "mesonet" / f"{stem}.h5"
    with pytest.raises(CheckpointError) as info:
        import_mesonet(path, "m", variant)
    message = str(info.value)
    assert f"{stem}.h5 holds {found} weights" in message
    assert layer in message


@pytest.mark.parametrize(
    ("name", "arrays"),
    [
        ("dense_5", {"kernel": np.zeros((1, 1), np.float32), "bias": np.zeros(1, np.float32)}),
        ("conv1d_1", {"kernel": np.zeros((3, 1, 1), np.float32), "bias": np.zeros(1, np.float32)}),
    ],
)
def test_an_extra_layer_is_named(
    weights: Path, tmp_path: Path, name: str, arrays: dict[str, np.ndarray]
) -> None:
    path = _edited(weights, tmp_path, "Meso4_F2F", _add_layer(name, arrays))
    with pytest.raises(CheckpointError) as info:
        import_mesonet(path, "m", None)
    message = str(info.value)
    assert str(path) in message
    assert f"unexpected layer {name}" in message


def test_non_finite_weights_are_refused(weights: Path, tmp_path: Path) -> None:
    def poison(f: Any) -> None:
        f["dense_4"]["dense_4/bias:0"][0] = np.nan

    path = _edited(weights, tmp_path, "Meso4_DF", poison)
    with pytest.raises(CheckpointError, match=r"layer dense_4 weight bias is not finite"):
        import_mesonet(path, "m", None)


def test_an_unknown_variant_is_a_config_error(weights: Path) -> None:
    with pytest.raises(ConfigError, match="unknown MesoNet variant"):
        import_mesonet(weights / "mesonet" / "Meso4_DF.h5", "m", "meso5")
