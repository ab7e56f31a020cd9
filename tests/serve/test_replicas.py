"""A member replica of an exported runtime runs without torch (serve/replicas.py): importing its
deployment's module and loading, then running, the member leave torch out of the process, and it
scores as the member in a process with torch does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.models import InferenceSettings, Member, ModelDirectory
from pipeline.models.member import sigmoid
from pipeline.models.preprocess import crops_to_unit_batch

#: Runs in a fresh interpreter: a member replica's work, and what it had to import.
REPLICA = """
import json, sys
import numpy as np
from serve.replicas import MemberServer
from pipeline.models.settings import InferenceSettings
root, name, faces = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
server = MemberServer(name, InferenceSettings(model_dir=root, backend="onnx", device="cpu"))
crops = [faces[k] for k in sorted(faces.files)]
probs = server.predict_many([crops[:1], crops[1:]])
print(json.dumps({
    "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
    "probs": [p.tolist() for p in probs],
}))
"""


def smooth_crop(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth random image with a little pixel noise, ``(h, w, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    small = torch.from_numpy(rng.uniform(0, 255, size=(1, 3, 4, 4)).astype(np.float32))
    img = torch.nn.functional.interpolate(small, size=(h, w), mode="bilinear")[0]
    noisy = img.permute(1, 2, 0).numpy() + rng.normal(0, 8, size=(h, w, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_an_exported_member_replica_never_imports_torch(model_dir: Path, tmp_path: Path) -> None:
    directory = ModelDirectory(model_dir)
    spec = directory.load().member("m2_effb4_detr_sine")
    # Loaded here first, as a first load does: it exports the member (with torch).
    settings = InferenceSettings(model_dir=model_dir, backend="onnx", device="cpu")
    member = Member.load(spec, directory, settings)
    # Smooth face-sized crops (on white noise the tiny test networks are chaotic: inputs 1e-7
    # apart give logits 1e-3 apart), smaller and larger than the member's input size.
    crops = [smooth_crop(h, h + 7, seed) for seed, h in enumerate((20, 64, 131))]
    np.savez(tmp_path / "crops.npz", *crops)
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            REPLICA,
            str(model_dir),
            member.name,
            str(tmp_path / "crops.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["torch"] == []
    got = np.concatenate([np.asarray(p) for p in answer["probs"]])
    # As the member scores them in a process with torch (the same numpy preparation).
    np.testing.assert_allclose(got, member.predict(crops), rtol=0, atol=1e-7)
    # And as when torch prepares the crops (as for the torch runner): the two resizes differ by
    # ~1e-7 per pixel (tests/pipeline/models/test_resize.py), which these tiny networks amplify.
    unit = crops_to_unit_batch(crops, spec.input_size, torch.device("cpu"), spec.resize)
    np.testing.assert_allclose(got, sigmoid(member.logits(unit)), rtol=0, atol=2e-5)
    assert np.ptp(got) > 1e-3, "the member must score the crops differently"
