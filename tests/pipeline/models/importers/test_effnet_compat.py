"""The ``effnet_pt`` network on its own: options, key mapping on another depth, ONNX export.

Small EfficientNet-B0s keep this fast; the B4 families are checked against their upstream code in
the importer tests beside this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch
from efficientnet_pytorch import EfficientNet

from pipeline.errors import ConfigError
from pipeline.models.backends import OnnxRunner, export_onnx
from pipeline.models.effnet_compat import StaticPadConv2d, efficientnet_pytorch_names
from pipeline.models.registry import build_network
from pipeline.models.spec import MemberSpec
from tests.pipeline.models.importers.reference_weights import randomise


def b0_spec(**options: str | int | bool) -> MemberSpec:
    return MemberSpec(
        name="b0",
        architecture="effnet_pt",
        backbone="tf_efficientnet_b0",
        options={"static_pad_size": 96, **options},
        input_size=64,
        output="softmax",
        num_classes=2,
        fake_index=1,
    )


def test_b4_pads_are_efficientnet_pytorchs() -> None:
    """Every strided convolution's fixed pad equals the ``ZeroPad2d`` efficientnet_pytorch
    builds for b4 (image_size 380), e.g. block 6's (2, 2, 2, 2) and block 22's (1, 2, 1, 2)."""
    reference = EfficientNet.from_name("efficientnet-b4")
    expected = [
        tuple(cast(torch.nn.ZeroPad2d, m.static_padding).padding)
        for m in reference.modules()
        if isinstance(m, torch.nn.Conv2d) and max(m.stride) > 1
    ]
    spec = MemberSpec(
        name="b4",
        architecture="effnet_pt",
        backbone="tf_efficientnet_b4",
        options={"static_pad_size": 380},
        input_size=224,
    )
    ours = [
        m.pad
        for m in build_network(spec).modules()
        if isinstance(m, StaticPadConv2d) and max(m.stride) > 1
    ]
    assert ours == expected
    assert ours[2] == (2, 2, 2, 2) and ours[4] == (1, 2, 1, 2)


def test_b0_with_foreign_pads_matches_efficientnet_pytorch() -> None:
    """Another depth configuration (b0: 16 blocks) and pads for 96 run at 64."""
    torch.manual_seed(0)
    reference = EfficientNet.from_name("efficientnet-b0", image_size=96, num_classes=2)
    x = torch.rand(4, 3, 64, 64)
    randomise(reference, x, seed=7)
    net = build_network(b0_spec())
    names = efficientnet_pytorch_names(net.body)
    names |= {"classifier.weight": "_fc.weight", "classifier.bias": "_fc.bias"}
    upstream = reference.state_dict()
    assert sorted(names.values()) == sorted(upstream)
    net.load_state_dict({k: upstream[v] for k, v in names.items()}, strict=True)
    with torch.no_grad():
        expected = reference(x)
        ours = net.body(x)
    assert torch.allclose(expected, ours, atol=1e-5), (expected - ours).abs().max()


def test_onnx_export_with_every_option(tmp_path: Path) -> None:
    spec = b0_spec(stem="unpadded", attention_after_block=9, siamese_head=True)
    net = build_network(spec)
    assert {"attconv.weight", "classifier.0.running_var", "classifier.1.weight"} <= set(
        net.state_dict()
    )
    # Inputs of their own seed: the global generator's state depends on the tests run before.
    faces = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    randomise(net.body, faces, seed=8)  # statistics of these inputs: moderate logits
    path = export_onnx(net, spec, tmp_path / "b0.onnx")
    runner = OnnxRunner(path, threads=1)
    # No memory pattern kept per input shape: it made long runs of varying batches grow.
    options = runner.session.get_session_options()
    assert options.enable_mem_pattern is False
    # One arena for the process's sessions (the ensemble's members run in turn).
    assert options.get_session_config_entry("session.use_env_allocators") == "1"
    for batch in (1, 3):  # the batch axis is dynamic
        x = faces[:batch]
        with torch.no_grad():
            expected = net(x).numpy()
        got = runner(x)
        assert got.shape == (batch,) and np.abs(expected).max() < 20
        np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"static_pad": 380}, r"unknown effnet_pt options \['static_pad'\]"),
        ({"static_pad_size": True}, r"static_pad_size must be an int"),
        ({"stem": "valid"}, r"stem must be 'same' or 'unpadded'"),
        ({"attention_after_block": 16}, r"attention_after_block 16 is past the last block"),
        ({"siamese_head": 1}, r"siamese_head must be a bool"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, str | int | bool], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_network(b0_spec(**options))


def test_a_backbone_that_is_not_an_efficientnet_is_refused() -> None:
    spec = b0_spec().model_copy(update={"backbone": "resnet18"})
    with pytest.raises(ConfigError, match=r"timm EfficientNet backbone.*'resnet18'"):
        build_network(spec)
