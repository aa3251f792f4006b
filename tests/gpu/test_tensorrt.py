"""TensorRT plan of the A2E network vs onnxruntime, at shapes other than the profile's opt shape.

Needs an NVIDIA GPU and the tensorrt package (the NGC container or a GPU host); skipped otherwise.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorrt", reason="tensorrt is not installed (GPU hosts / NGC container only)")
if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU on this machine", allow_module_level=True)

from emoserve.lam_a2e.network import build_network  # noqa: E402
from export.lam_a2e import A2ENetworkSpec  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from export.tensorrt import build_a2e_plan, validate_plan  # noqa: E402

pytestmark = pytest.mark.gpu


def test_plan_matches_onnxruntime(tmp_path):
    onnx_path = export_onnx(build_network("tiny", seed=0), A2ENetworkSpec(), tmp_path / "model.onnx")
    plan = build_a2e_plan(onnx_path, tmp_path / "model.plan", max_batch=8)
    worst = validate_plan(plan, onnx_path, shapes=[(1, 16000), (3, 34133), (8, 20000)])
    assert worst <= 1e-3
