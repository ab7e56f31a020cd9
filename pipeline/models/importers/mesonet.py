"""MesoNet's Keras HDF5 weight files -> a Meso4 / MesoInception4 member, with h5py only.

Upstream publishes ``model.save_weights`` files of Keras 2.1.5: the root's ``layer_names``
attribute lists every layer of the model (weightless ones too), and the group of each layer lists
its arrays in ``weight_names`` (``conv2d_5/kernel:0``...). Keras matched them to a rebuilt model
by position; here they are matched by layer type and creation order instead, which is the
number Keras appends to a layer's name (``conv2d_1`` was built before ``conv2d_2``). The two
orders differ: ``layer_names`` is topological, and in MesoInception4's files it lists an Inception
block's convolutions as ``conv2d_2, conv2d_4, conv2d_6, conv2d_1, ...``. Creation order is the
order of upstream ``classifiers.py``, whose branches 2 and 3 have equal shapes, so nothing else
could tell them apart. Numbers start wherever the authors' session left the counters
(``conv2d_5`` in ``Meso4_DF.h5``), so only their order is used.

Layouts: conv kernel ``(kh, kw, in, out)`` -> ``(out, in, kh, kw)``; Dense kernel ``(in, out)``
-> ``(out, in)`` (rows in Keras' NHWC flatten order, which :mod:`pipeline.models.mesonet` keeps);
BatchNormalization ``gamma, beta, moving_mean, moving_variance`` -> ``weight, bias,
running_mean, running_var``.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import CheckpointError
from pipeline.models.checkpoint import check_state_dict
from pipeline.models.importers.base import ImportedMember, upstream_source
from pipeline.models.mesonet import VARIANTS, check_variant, mesonet_spec
from pipeline.models.registry import builder

#: Keras layer types that hold weights in MesoNet, by their auto-name prefix.
_KINDS = ("conv2d", "batch_normalization", "dense")
#: ``conv2d_12`` -> ("conv2d", 12); tf.keras names the first layer of a type without a number.
_LAYER_NAME = re.compile(r"^(?P<kind>[a-z0-9_]+?)(?:_(?P<number>\d+))?$")
#: Keras weight name (after the layer prefix, without ``:0``) -> torch parameter name.
_PARAMS: dict[str, dict[str, str]] = {
    "conv2d": {"kernel": "weight", "bias": "bias"},
    "batch_normalization": {
        "gamma": "weight",
        "beta": "bias",
        "moving_mean": "running_mean",
        "moving_variance": "running_var",
    },
    "dense": {"kernel": "weight", "bias": "bias"},
}

#: The weight that gives each layer type's shape (the one mapped to torch ``weight``).
_MAIN = {"conv2d": "kernel", "batch_normalization": "gamma", "dense": "kernel"}

#: An Inception block's convolutions in upstream build order (``InceptionLayer``'s lines).
_BLOCK: tuple[str, ...] = (
    "branch1",
    "branch2_reduce",
    "branch2",
    "branch3_reduce",
    "branch3",
    "branch4_reduce",
    "branch4",
)
#: Variant -> Keras layer type -> torch module names, in upstream build order.
LAYERS: dict[str, dict[str, tuple[str, ...]]] = {
    "meso4": {
        "conv2d": ("conv1", "conv2", "conv3", "conv4"),
        "batch_normalization": ("bn1", "bn2", "bn3", "bn4"),
        "dense": ("fc1", "fc2"),
    },
    "mesoinception4": {
        "conv2d": (
            *(f"inception1.{b}" for b in _BLOCK),
            *(f"inception2.{b}" for b in _BLOCK),
            "conv3",
            "conv4",
        ),
        "batch_normalization": ("bn1", "bn2", "bn3", "bn4"),
        "dense": ("fc1", "fc2"),
    },
}


@dataclass(frozen=True)
class _Layer:
    name: str
    kind: str
    number: int
    weights: dict[str, np.ndarray]  # Keras short name ("kernel") -> array


def import_mesonet(path: Path, name: str, variant: str | None) -> ImportedMember:
    """Convert upstream MesoNet's Keras weights file ``path`` into member ``name``.

    ``variant`` is ``meso4`` or ``mesoinception4``, or None to infer it from the file's layers.
    Raises :class:`CheckpointError` naming the file and the layer for a file that is not HDF5,
    is truncated, lacks a layer or weight, has a misshapen or extra one, or is of the other
    variant; nothing is returned unless every array of the network came from the file.
    """
    if variant is not None:
        check_variant(variant)
    layers = _read_layers(path)
    by_kind = _group(path, layers)
    inferred = _infer_variant(by_kind)
    if inferred is None:
        raise CheckpointError(
            f"{path}: not a MesoNet weights file (no conv2d layer among its "
            f"{len(layers)} layers with weights)"
        )
    found, evidence = inferred
    if variant is None:
        variant = found
    elif found != variant:
        raise CheckpointError(
            f"{path} holds {VARIANTS[found]} weights, not {VARIANTS[variant]} ({evidence}); "
            f"import it as variant {found!r}"
        )
    spec = mesonet_spec(name, variant).model_copy(
        update={"source": upstream_source("Keras weights", path)}
    )
    net = builder(variant)(spec)
    own = net.state_dict()
    state: dict[str, torch.Tensor] = {}
    for kind, modules in LAYERS[variant].items():
        found_layers = by_kind[kind]
        shapes = [_keras_shape(kind, _MAIN[kind], tuple(own[f"{m}.weight"].shape)) for m in modules]
        _check_count(path, variant, kind, found_layers, shapes)
        for layer, module in zip(found_layers, modules, strict=True):
            state.update(_convert(path, layer, module, own))
    # The converted dict must fill the network exactly; anything else is a bug in LAYERS.
    check_state_dict(net, state, f"{path} converted for {VARIANTS[variant]}")
    return ImportedMember(spec=spec, state=state)


def _read_layers(path: Path) -> list[_Layer]:
    """Every weight-holding layer of the file, in the file's order."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            root: Any = f
            if "layer_names" not in f.attrs and "model_weights" in f:
                root = f["model_weights"]  # model.save() nests the save_weights layout here
            if "layer_names" not in root.attrs:
                raise CheckpointError(
                    f"{path}: HDF5 but not a Keras weights file (no 'layer_names' attribute)"
                )
            layers = []
            for raw in root.attrs["layer_names"]:
                layer_name = _text(raw)
                layer = _read_layer(path, root, layer_name)
                if layer is not None:
                    layers.append(layer)
            return layers
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        # h5py raises OSError for a file that is not HDF5 or is cut short, and KeyError /
        # OSError when a listed group or array cannot be read back.
        raise CheckpointError(
            f"{path}: cannot read the Keras HDF5 file (not HDF5, truncated or damaged): "
            f"{_one_line(exc)}"
        ) from exc


def _read_layer(path: Path, root: Any, layer_name: str) -> _Layer | None:
    if layer_name not in root:
        raise CheckpointError(f"{path}: layer {layer_name} is listed but has no group")
    group = root[layer_name]
    weight_names = [_text(w) for w in group.attrs.get("weight_names", [])]
    if not weight_names:
        return None  # input, pooling, dropout, flatten, concatenate, activation layers
    match = _LAYER_NAME.match(layer_name)
    kind = match.group("kind") if match else layer_name
    if kind not in _PARAMS:
        raise CheckpointError(
            f"{path}: unexpected layer {layer_name} with weights (MesoNet has only "
            f"{', '.join(_KINDS)} layers)"
        )
    number = int(match.group("number") or 0) if match else 0
    weights: dict[str, np.ndarray] = {}
    for weight_name in weight_names:
        short = weight_name.rsplit("/", 1)[-1].split(":", 1)[0]
        if short not in _PARAMS[kind]:
            raise CheckpointError(f"{path}: layer {layer_name} has an unexpected weight {short}")
        if weight_name not in group:
            raise CheckpointError(f"{path}: layer {layer_name} lists {weight_name} but lacks it")
        try:
            array = np.asarray(group[weight_name][()])
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(
                f"{path}: layer {layer_name} weight {short} cannot be read (truncated or "
                f"damaged file): {_one_line(exc)}"
            ) from exc
        if not np.issubdtype(array.dtype, np.floating):
            raise CheckpointError(
                f"{path}: layer {layer_name} weight {short} is {array.dtype}, not floating point"
            )
        if not np.isfinite(array).all():
            raise CheckpointError(f"{path}: layer {layer_name} weight {short} is not finite")
        weights[short] = array.astype(np.float32)
    missing = [w for w in _PARAMS[kind] if w not in weights]
    if missing:
        raise CheckpointError(f"{path}: layer {layer_name} lacks {', '.join(missing)}")
    return _Layer(layer_name, kind, number, weights)


def _group(path: Path, layers: list[_Layer]) -> dict[str, list[_Layer]]:
    """Layers by type, each list in creation order (the number Keras appended to the name)."""
    by_kind: dict[str, list[_Layer]] = {k: [] for k in _KINDS}
    for layer in layers:
        by_kind[layer.kind].append(layer)
    for kind, listed in by_kind.items():
        listed.sort(key=lambda layer: layer.number)
        numbers = [layer.number for layer in listed]
        if len(set(numbers)) != len(numbers):
            raise CheckpointError(f"{path}: two {kind} layers share a number: {_names(listed)}")
    return by_kind


def _infer_variant(by_kind: dict[str, list[_Layer]]) -> tuple[str, str] | None:
    """``(variant, the evidence for it)`` from the file's convolutions, None without any.

    Only MesoInception4 has 1x1 kernels (its Inception branches); judging by kernels rather than
    layer counts still names the family of a file with a missing or extra layer, so the error
    can name that layer.
    """
    convs = by_kind["conv2d"]
    if not convs:
        return None
    for layer in convs:
        if layer.weights["kernel"].shape[:2] == (1, 1):
            return "mesoinception4", f"its layer {layer.name} is a 1x1 convolution"
    return "meso4", f"none of its {len(convs)} conv2d layers ({_names(convs)}) is 1x1"


def _check_count(
    path: Path, variant: str, kind: str, found: list[_Layer], shapes: list[tuple[int, ...]]
) -> None:
    """Raise unless the file has one ``kind`` layer per module (whose Keras shapes are
    ``shapes``), naming the first extra or the missing layer."""
    expected = len(shapes)
    if len(found) == expected:
        return
    label = VARIANTS[variant]
    if len(found) > expected:
        extra = _names(found[expected:])
        raise CheckpointError(
            f"{path}: unexpected layer {extra}: {label} has {expected} {kind} layers, the file "
            f"{len(found)} ({_names(found)})"
        )
    raise CheckpointError(
        f"{path}: missing layer {_missing_name(kind, found, shapes)}: {label} has {expected} "
        f"{kind} layers, the file {len(found)} ({_names(found) or 'none'})"
    )


def _missing_name(kind: str, found: list[_Layer], shapes: list[tuple[int, ...]]) -> str:
    """The name the missing layer would have had.

    Keras numbers a model's layers of one type consecutively, so a gap in the numbers is the
    missing layer; without one, it is the layer before the first or after the last, told apart
    by which end still has the shape the network expects there (both named when neither tells).
    """
    if not found:
        return f"{kind}_*"
    numbers = [layer.number for layer in found]
    for previous, current in itertools.pairwise(numbers):
        if current != previous + 1:
            return f"{kind}_{previous + 1}"
    before, after = f"{kind}_{numbers[0] - 1}", f"{kind}_{numbers[-1] + 1}"
    first_fits = found[0].weights[_MAIN[kind]].shape == shapes[0]
    last_fits = found[-1].weights[_MAIN[kind]].shape == shapes[-1]
    if numbers[0] == 0 or (first_fits and not last_fits):
        return after
    if last_fits and not first_fits:
        return before
    return f"{before} or {after}"


def _keras_shape(kind: str, keras_name: str, target: tuple[int, ...]) -> tuple[int, ...]:
    """The Keras shape of the array that becomes a torch tensor of shape ``target``."""
    if keras_name == "kernel" and kind == "conv2d":
        return (target[2], target[3], target[1], target[0])  # (kh, kw, in, out)
    if keras_name == "kernel":
        return (target[1], target[0])  # (in, out)
    return target


#: Keras (layer type, weight) -> axes that turn it into the torch layout.
_AXES: dict[tuple[str, str], tuple[int, ...]] = {
    ("conv2d", "kernel"): (3, 2, 0, 1),
    ("dense", "kernel"): (1, 0),
}


def _convert(
    path: Path, layer: _Layer, module: str, own: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """One Keras layer -> its torch parameters under ``module``, shapes checked against ``own``."""
    out: dict[str, torch.Tensor] = {}
    for keras_name, torch_name in _PARAMS[layer.kind].items():
        array = layer.weights[keras_name]
        key = f"{module}.{torch_name}"
        expected = _keras_shape(layer.kind, keras_name, tuple(own[key].shape))
        if array.shape != expected:
            raise CheckpointError(
                f"{path}: layer {layer.name} {keras_name} has shape {array.shape}, the network "
                f"needs {expected} (for {module})"
            )
        axes = _AXES.get((layer.kind, keras_name), (0,))
        out[key] = torch.from_numpy(np.ascontiguousarray(array.transpose(axes)))
    if layer.kind == "batch_normalization":
        # Keras keeps no batch counter; torch's BatchNorm has one in its state dict.
        out[f"{module}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def _names(layers: list[_Layer]) -> str:
    return ", ".join(layer.name for layer in layers)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())
