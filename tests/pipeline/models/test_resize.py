"""The numpy resize against the torch one it stands in for (to 1e-6), and its torch-free import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from pipeline.errors import BadInputError
from pipeline.models.preprocess import crops_to_unit_batch
from pipeline.models.resize import unit_batch
from pipeline.models.spec import ResizeRule
from tests.conftest import REPO_ROOT

SIZES = (19, 64, 224, 299, 380)
RULES: tuple[ResizeRule, ...] = ("stretch", "letterbox")
#: Sides every size meets: one-pixel, equal to a size (no resize), just off it, non-square.
EDGE_SHAPES = [(1, 1), (1, 7), (7, 1), (1, 500), (500, 1), (2, 499), (64, 64), (64, 65), (380, 380)]
CPU = torch.device("cpu")


def _random_crops(seed: int, n: int = 40) -> list[np.ndarray]:
    """``n`` random ``(H, W, 3)`` uint8 crops with sides in [1, 500], then the edge shapes."""
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(s) for s in rng.integers(1, 501, 2)) for _ in range(n)] + EDGE_SHAPES
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def _assert_matches_torch(crops: list[np.ndarray], size: int, rule: ResizeRule) -> None:
    expected = crops_to_unit_batch(crops, size, CPU, rule).numpy()
    got = unit_batch(crops, size, rule)
    assert got.shape == expected.shape == (len(crops), 3, size, size)
    assert got.dtype == expected.dtype == np.float32
    assert float(np.abs(got - expected).max(initial=0.0)) <= 1e-6


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("size", SIZES)
def test_matches_torch(size: int, rule: ResizeRule) -> None:
    """Upscale, downscale, equal size, one-pixel and non-square crops, each resized on its own."""
    _assert_matches_torch(_random_crops(seed=size), size, rule)


@pytest.mark.parametrize("rule", RULES)
def test_views_and_empty_batch(rule: ResizeRule) -> None:
    """Read-only and strided views (as cut from a decoded frame) and an empty batch."""
    frame = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    frame.flags.writeable = False
    crops = [frame[10:200:2, 5:300, :], frame[:, ::-3, ::-1], frame[50:51, 60:200]]
    _assert_matches_torch(crops, 64, rule)
    _assert_matches_torch([], 64, rule)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((8, 8, 3), dtype=np.float32),  # wrong dtype
        np.zeros((8, 8), dtype=np.uint8),  # 2-D
        np.zeros((8, 8, 4), dtype=np.uint8),  # four channels
        np.zeros((0, 8, 3), dtype=np.uint8),  # no rows
        np.zeros((8, 0, 3), dtype=np.uint8),  # no columns
    ],
    ids=["float32", "2-D", "4-channels", "no-rows", "no-columns"],
)
def test_bad_crop_is_refused_as_torch_refuses_it(bad: np.ndarray) -> None:
    """The same error and message as :func:`crops_to_unit_batch`, naming the crop's index."""
    crops = [np.zeros((4, 4, 3), dtype=np.uint8), bad]
    with pytest.raises(BadInputError) as from_torch:
        crops_to_unit_batch(crops, 32, CPU)
    with pytest.raises(BadInputError, match=r"^face crop 1 must be") as from_numpy:
        unit_batch(crops, 32)
    assert str(from_numpy.value) == str(from_torch.value)


def test_module_imports_no_torch() -> None:
    """Importing the module, and resizing with it, loads no torch (in a fresh interpreter)."""
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        from pipeline.models.resize import unit_batch

        out = unit_batch([np.zeros((5, 9, 3), np.uint8)], 8, "letterbox")
        assert out.shape == (1, 3, 8, 8), out.shape
        loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not loaded, loaded
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
