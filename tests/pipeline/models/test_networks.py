import pytest
import timm
import torch

from pipeline.models.detr import PositionEmbeddingLearned, PositionEmbeddingSine
from pipeline.models.networks import DetrClassifier, build_network
from pipeline.models.spec import DetrHeadSpec, MemberSpec, paper_members, tiny_members


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_has_five_members_with_paper_shapes() -> None:
    specs = paper_members()
    assert [s.name for s in specs] == [
        "m1_effb4",
        "m2_effb4_detr_sine",
        "m3_effb4_detr_learned",
        "m4_effb4_detr_multiscale",
        "m5_effv2m",
    ]
    assert all(s.input_size == 300 for s in specs)
    assert [s.backbone for s in specs] == ["efficientnet_b4"] * 4 + ["tf_efficientnetv2_m"]
    assert all(s.mean == (0.485, 0.456, 0.406) and s.std == (0.229, 0.224, 0.225) for s in specs)
    heads = [s.head for s in specs]
    assert heads[1] is not None and heads[1].position == "sine" and heads[1].num_queries == 1
    assert heads[2] is not None and heads[2].position == "learned"
    assert heads[3] is not None and heads[3].stages == (3, 4)


@pytest.mark.parametrize("index", [0, 4])
def test_vanilla_members_match_timm_reference_parameter_count(index: int) -> None:
    spec = paper_members()[index]
    reference = timm.create_model(spec.backbone, pretrained=False, num_classes=1)
    assert n_params(build_network(spec)) == n_params(reference)


def test_members_2_and_3_differ_exactly_by_positional_parameters() -> None:
    sine, learned = paper_members()[1], paper_members()[2]
    net_sine, net_learned = build_network(sine), build_network(learned)
    pos_params = sum(
        n_params(m) for m in net_learned.modules() if isinstance(m, PositionEmbeddingLearned)
    )
    assert sum(n_params(m) for m in net_sine.modules() if isinstance(m, PositionEmbeddingSine)) == 0
    assert pos_params == 50 * 256
    assert n_params(net_learned) - n_params(net_sine) == pos_params


def test_member_4_is_a_distinct_two_scale_architecture() -> None:
    spec = tiny_members()[3]
    net = build_network(spec).body
    assert isinstance(net, DetrClassifier)
    assert len(net.heads) == 2
    assert net.backbone.feature_info.reduction() == [16, 32]
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        assert net(x).shape == (3,)


def test_initialisation_is_deterministic_and_differs_between_members() -> None:
    a, b = build_network(tiny_members()[1]), build_network(tiny_members()[1])
    for (ka, va), (_kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka
    m2, m3 = tiny_members()[1], tiny_members()[2]
    w2 = build_network(m2).state_dict()["heads.0.input_proj.weight"]
    w3 = build_network(m3).state_dict()["heads.0.input_proj.weight"]
    assert not torch.equal(w2, w3)


def test_head_spec_validation() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DetrHeadSpec(d_model=30, nhead=4)
    with pytest.raises(ValueError, match="head"):
        MemberSpec(name="x", architecture="detr", backbone="efficientnet_b0")


@pytest.mark.parametrize("spec", tiny_members(), ids=lambda s: s.name)
def test_every_member_outputs_one_logit_per_face(spec: MemberSpec) -> None:
    with torch.inference_mode():
        y = build_network(spec)(torch.rand(2, 3, spec.input_size, spec.input_size))
    assert y.shape == (2,)
    assert torch.isfinite(y).all()
