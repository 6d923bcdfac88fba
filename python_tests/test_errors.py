"""Bad input gets an actionable exception at the boundary, from both backends."""

import pytest
import torch

import dse_ext
from dse_ext import functional as F
from dse_ext import reference as R

BACKENDS = ["ext", "reference"]


def feats(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad,exc,match", [
    (feats(10, 8), ValueError, r"\(B, N, d\)"),
    (feats(2, 3, 4, 5), ValueError, r"\(B, N, d\)"),
    (torch.ones(4, 10, 8, dtype=torch.long), TypeError, "floating"),
    (torch.ones(4, 10, 8, dtype=torch.bool), TypeError, "floating"),
    (torch.empty(0, 10, 8), ValueError, "empty"),
    (torch.empty(4, 0, 8), ValueError, "empty"),
    (feats(1, 50, 8), ValueError, "at least 2 images"),
    (feats(4, 2, 8), ValueError, "too few tokens for local_clusters"),
    ([[1.0]], TypeError, "torch.Tensor"),
])
def test_bad_features(backend, bad, exc, match):
    with pytest.raises(exc, match=match):
        dse_ext.dse(bad, backend=backend, global_clusters=4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_features(backend, value):
    x = feats(4, 10, 8)
    x[2, 3, 1] = value
    with pytest.raises(ValueError, match="NaN/Inf"):
        dse_ext.dse(x, backend=backend, global_clusters=4)


def test_overflowing_sum_of_finite_values_is_accepted():
    from dse_ext._validation import as_float_tensor

    x = torch.full((4, 3), 3e38)  # the fast-path sum overflows, the values are finite
    assert as_float_tensor(x, "x") is x


@pytest.mark.parametrize("backend", BACKENDS)
def test_too_few_tokens_for_global_clusters(backend):
    with pytest.raises(ValueError, match="too few tokens for global_clusters=24"):
        dse_ext.dse(feats(2, 10, 8), backend=backend)  # 20 tokens in the only group
    with pytest.raises(ValueError, match="too few tokens for global_clusters=24"):
        dse_ext.dse(feats(9, 10, 8), backend=backend)  # last group: 1 image of 10 tokens


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(local_clusters=0), ValueError, "local_clusters must be >= 1"),
    (dict(global_clusters=1), ValueError, "global_clusters must be >= 2"),
    (dict(group_size=0), ValueError, "group_size must be >= 1"),
    (dict(local_clusters=2.5), TypeError, "must be an int"),
    (dict(m_dim="mean"), ValueError, "m_dim must be one of"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
    (dict(init="random"), ValueError, "init must be one of"),
    (dict(tol=-1.0), ValueError, "tol must be"),
    (dict(max_iters=-1), ValueError, "max_iters must be >= 0"),
])
def test_bad_options(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        dse_ext.dse(feats(4, 10, 8), **{"global_clusters": 4, **kwargs})


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_labels(backend):
    x = feats(4, 10, 8)
    good = torch.zeros(4, 10, dtype=torch.long)
    cases = [
        (dict(local_labels=torch.full((4, 10), 3)), ValueError, r"local_labels must take values in \[0, 3\)"),
        (dict(local_labels=torch.full((4, 10), -1)), ValueError, "local_labels must take values"),
        (dict(global_labels=good[:, :5]), ValueError, r"global_labels must have shape \(4, 10\)"),
        (dict(global_labels=good.float()), TypeError, "integer tensor"),
        (dict(local_labels=good.tolist()), TypeError, "torch.Tensor"),
    ]
    for kw, exc, match in cases:
        with pytest.raises(exc, match=match):
            dse_ext.dse(x, backend=backend, global_clusters=4, **kw)


def test_single_cluster_labels_leave_m_inter_undefined():
    x = feats(4, 10, 8)
    with pytest.raises(ValueError, match="M_inter is undefined"):
        dse_ext.dse(x, global_clusters=4, global_labels=torch.zeros(4, 10, dtype=torch.long))


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_cluster_with_two_tokens(backend):
    x = feats(4, 3, 8)  # 3 tokens per image, 3 local clusters: every cluster has one token
    with pytest.raises(ValueError, match="no image has a local cluster of >= 2 tokens"):
        dse_ext.dse(x, backend=backend, global_clusters=4)
    with pytest.raises(ValueError, match="no global cluster has >= 2 tokens"):
        dse_ext.dse(feats(2, 3, 8), backend=backend, local_clusters=1, global_clusters=6, group_size=2)


def test_constant_features():
    with pytest.raises(ValueError, match="identical"):
        dse_ext.dse(torch.ones(4, 10, 8), global_clusters=4)


@pytest.mark.parametrize("mod", [F, R])
def test_functional_errors(mod):
    x = feats(3, 20, 4)
    with pytest.raises(ValueError, match="too few points for 30 clusters"):
        mod.kmeans(x, 30)
    with pytest.raises(ValueError, match=r"counts must hold 3"):
        mod.kmeans(x, 2, counts=[20, 20])
    with pytest.raises(ValueError, match="too few points"):
        mod.kmeans(x, 2, counts=[20, 1, 20])
    with pytest.raises(ValueError, match=r"labels must take values in \[-1, 3\)"):
        mod.cluster_css(x, torch.full((3, 20), 3), 3)
    with pytest.raises(ValueError, match=r"labels must have shape \(3, 20\)"):
        mod.cluster_css(x, torch.zeros(3, 19, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"\(\.\.\., m, d\)"):
        mod.effective_rank(torch.ones(5))
    with pytest.raises(ValueError, match=r"index must take values in \[0, 6\)"):
        mod.effective_rank(feats(6, 4), index=torch.tensor([[0, 6]]))
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        mod.effective_rank(feats(6, 4), index=torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"with index, x must be a non-empty \(rows, d\) table"):
        mod.effective_rank(feats(2, 6, 4), index=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="centroids must have shape"):
        mod.nearest_other_centroid_distance(x, feats(3, 2, 5), torch.zeros(3, 20, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN/Inf"):
        mod.effective_rank(torch.tensor([[float("nan"), 1.0]]))


def test_ops_check_arguments_themselves():
    # The C++ ops guard their own boundary too (no crash on direct torch.ops calls).
    x = torch.randn(2, 10, 3)
    with pytest.raises(RuntimeError, match="must be 3-D"):
        torch.ops.dse.effective_rank(torch.randn(3, 3))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.dse.effective_rank(torch.ones(2, 3, 3, dtype=torch.long))
    with pytest.raises(RuntimeError, match="need between k"):
        torch.ops.dse.kmeans(x, torch.tensor([10, 2]), 3, 5, 1e-4, 0, 0)
    with pytest.raises(RuntimeError, match="out of range|must lie in"):
        torch.ops.dse.cluster_css(x, torch.full((2, 10), 7), 3)
    with pytest.raises(RuntimeError, match="must lie in"):
        torch.ops.dse.nearest_other_centroid_distance(x, torch.randn(2, 3, 3), torch.full((2, 10), -2), None)
    with pytest.raises(RuntimeError, match="must not be empty"):
        torch.ops.dse.cluster_css(torch.empty(2, 0, 3), torch.empty(2, 0, dtype=torch.long), 3)


def test_unsupported_device_message():
    if torch.cuda.is_available() and dse_ext.cuda_built():
        pytest.skip("this build has CUDA kernels and a GPU is present")
    x = feats(4, 10, 8, dtype=torch.float64).to("meta")
    with pytest.raises(RuntimeError, match="no compiled kernels for meta"):
        F.effective_rank(x)
