"""Every registry architecture exports to ONNX and matches PyTorch; small_cnn's pooling is exactly adaptive
average pooling; int8 quantization and the CPU-limit thread count.

Export cost is tracing, not compute, so the two small CNNs (the CPU defaults) run in the fast set and the
torchvision architectures (tens of seconds each on a shared 2-core box) are marked slow.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from visionops import onnx_runtime as ox
from visionops.models import available, create_model, get_entry

SLOW_ARCHS = {
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "convnext_tiny",
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("size", [6, 8, 7, 5, 12, 3])
def test_grid_pool_is_adaptive_average_pooling(size):
    """The exportable pooling equals nn.AdaptiveAvgPool2d(4) (forward and gradient) for every map size,
    including small_cnn's 6x6 where the 4 bins overlap: the recipe trains the same function as before."""
    model = create_model("small_cnn", 2)
    x = torch.randn(3, 5, size, size + 1, dtype=torch.float64, requires_grad=True)
    ours = model.pool(x)
    reference = torch.nn.functional.adaptive_avg_pool2d(x, 4)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    weights = torch.randn_like(reference)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    (g_ref,) = torch.autograd.grad((reference * weights).sum(), x)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-12)


def test_small_cnn_state_dict_unchanged_by_the_pooling():
    """The pooling has no parameters: bundles saved before the change load as they are."""
    keys = set(create_model("small_cnn", 2).state_dict())
    assert not any(k.startswith("pool") for k in keys)
    assert {"neck.2.weight", "head.weight", "features.0.0.weight"} <= keys


def _input_size(arch: str) -> int:
    """The registry size for the small CNNs (small_cnn's 6x6 map is the case that matters), 32 px for the
    torchvision models (global pooling makes any size valid; tiny inputs keep the test fast)."""
    return get_entry(arch).preprocess.image_size if arch not in SLOW_ARCHS else 32


@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHS else a for a in available()]
)
def test_every_architecture_exports_with_parity(arch, tmp_path):
    """Export with a dynamic batch; batch sizes 1 and 5 give PyTorch's probabilities within 1e-4, the same
    decisions, and the same embeddings (the head's input), from the graph's one forward pass."""
    torch.manual_seed(0)
    model = create_model(arch, 3).eval()
    size = _input_size(arch)
    path = ox.export_onnx(model, arch, size, tmp_path / "model.onnx")
    onnx_model = ox.OnnxModel(path, threads=1)
    for batch in (1, 5):
        x = torch.randn(batch, 3, size, size)
        reference = ox.torch_outputs(model, arch, x)
        candidate = onnx_model.outputs(x)
        check = ox.parity(reference, candidate, positive_index=0, threshold=0.4)
        print(arch, batch, check)
        assert check["passed"], check
        assert candidate[0].shape == (batch, 3) and candidate[1].shape == reference[1].shape
        np.testing.assert_allclose(candidate[1], reference[1], rtol=1e-4, atol=1e-4)


def test_parity_fails_on_a_changed_decision():
    """A probability moved across the threshold by less than the bound still fails parity (decisions)."""
    logits = np.array([[0.0, 0.0], [2.0, 0.0]])
    nudged = logits + np.array([[-2e-5, 0.0], [0.0, 0.0]])  # P(class 0) 0.5 -> 0.499995
    check = ox.parity((logits, np.zeros((2, 1))), (nudged, np.zeros((2, 1))), positive_index=0, threshold=0.5)
    assert check["max_prob_diff"] < ox.MAX_PROB_DIFF and check["decisions_differ"] == 1
    assert not check["passed"]


def test_int8_artifact_is_smaller_and_runs(tmp_path):
    """Static int8 (calibrated on images) gives a graph with int8 weights that still outputs both heads."""
    torch.manual_seed(0)
    model = create_model("small_cnn", 2).eval()
    fp32 = ox.export_onnx(model, "small_cnn", 96, tmp_path / "model.onnx")
    calibration = torch.randn(16, 3, 96, 96).numpy()
    int8 = ox.quantize_int8(fp32, calibration, tmp_path / "model.int8.onnx")
    quantized = ox.OnnxModel(int8, runtime="onnx-int8", threads=1)
    dtypes = {t.dtype for t in quantized.state_dict().values()}
    assert torch.int8 in dtypes
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    logits, embedding = quantized.outputs(torch.from_numpy(calibration[:4]))
    assert logits.shape == (4, 2) and embedding.shape == (4, 128) and np.isfinite(logits).all()


def test_corrupt_onnx_file_is_a_bundle_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07not a protobuf graph")
    with pytest.raises(ox.BundleError, match="ONNX Runtime cannot load model.onnx"):
        ox.OnnxModel(path)
    with pytest.raises(ox.BundleError, match="missing"):
        ox.OnnxModel(tmp_path / "absent.onnx")


@pytest.mark.parametrize(
    "cpu_max,expected",
    [("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None)],
)
def test_threads_follow_the_container_cpu_limit(tmp_path, cpu_max, expected):
    """cgroup v2 cpu.max: quota/period rounded up, capped by the CPUs we may run on; "max" = no limit."""
    (tmp_path / "cpu.max").write_text(cpu_max)
    usable = len(__import__("os").sched_getaffinity(0))
    want = usable if expected is None else min(expected, usable)
    assert ox.cpu_limit_threads(tmp_path) == want


def test_threads_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert ox.cpu_limit_threads(tmp_path) == 1
