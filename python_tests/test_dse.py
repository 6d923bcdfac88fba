"""The assembled metric: the backends agree, and its invariances and properties hold."""

import math

import pytest
import torch

import dse_ext
from dse_ext.metric import DSEOutput

from helpers import clustered

FIELDS = DSEOutput._fields


def assert_outputs_close(a, b, rtol, atol=0.0):
    for name in FIELDS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol, msg=name)


def kmeans_labels(x, k_l, k_g, G):
    """Labels from the compiled k-means, to feed both backends."""
    B, N, d = x.shape
    xn = torch.nn.functional.normalize(x, dim=-1)
    _, local = dse_ext.functional.kmeans(xn, k_l)
    xg, counts = dse_ext.metric._group(xn, G)
    _, glob = dse_ext.functional.kmeans(xg, k_g, counts=counts)
    glob = glob.reshape(-1, N)[:B]
    return local, glob


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("B,N,d,G", [(6, 30, 16, 4), (9, 20, 40, 3), (2, 50, 8, 8)])
def test_components_match_reference_given_labels(gen, dtype, rtol, B, N, d, G):
    x = torch.randn(B, N, d, generator=gen, dtype=dtype)
    local, glob = kmeans_labels(x, 3, 5, G)
    kw = dict(local_clusters=3, global_clusters=5, group_size=G, local_labels=local, global_labels=glob)
    for m_dim in ("per_position", "pooled"):
        ext = dse_ext.dse(x, backend="ext", m_dim=m_dim, **kw)
        ref = dse_ext.dse(x, backend="reference", m_dim=m_dim, **kw)
        assert_outputs_close(ext, ref, rtol=rtol, atol=1e-7 if dtype == torch.float32 else 0.0)
        assert all(getattr(ext, f).dtype == dtype and getattr(ext, f).dim() == 0 for f in FIELDS)


def test_full_pipeline_matches_reference_in_float64(gen):
    x = torch.randn(10, 25, 12, generator=gen, dtype=torch.float64)
    kw = dict(local_clusters=3, global_clusters=6, group_size=4, seed=7)
    assert_outputs_close(dse_ext.dse(x, backend="ext", **kw), dse_ext.dse(x, backend="reference", **kw), rtol=1e-10)


def test_official_form_and_intra_average(gen):
    out = dse_ext.dse(torch.randn(4, 30, 8, generator=gen), global_clusters=5)
    torch.testing.assert_close(out.m_intra, 0.5 * (out.m_intra_image + out.m_intra_batch))
    torch.testing.assert_close(out.dse, out.m_inter - out.m_intra + out.m_dim)
    assert set(out.to_dict()) == set(FIELDS)


def test_deterministic_and_global_rng_untouched(gen):
    x = torch.randn(8, 40, 16, generator=gen)
    state = torch.get_rng_state()
    a, b = dse_ext.dse(x, global_clusters=6), dse_ext.dse(x, global_clusters=6)
    assert torch.equal(state, torch.get_rng_state())
    for f in FIELDS:
        assert torch.equal(getattr(a, f), getattr(b, f))
    c = dse_ext.dse(x, global_clusters=6, seed=1)
    assert not torch.equal(a.m_dim, c.m_dim)


def test_rotation_invariance(gen):
    x = torch.randn(8, 30, 12, generator=gen, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen, dtype=torch.float64))
    kw = dict(global_clusters=5, group_size=4)
    local, glob = kmeans_labels(x, 3, 5, 4)
    # with fixed labels every component is exactly rotation invariant
    a = dse_ext.dse(x, local_labels=local, global_labels=glob, **kw)
    b = dse_ext.dse(x @ q, local_labels=local, global_labels=glob, **kw)
    assert_outputs_close(a, b, rtol=1e-9)
    # k-means itself is rotation equivariant on well separated data
    xs, _ = clustered(gen, 8, 30, 12, 3, spread=0.02)
    assert_outputs_close(dse_ext.dse(xs, **kw), dse_ext.dse(xs @ q, **kw), rtol=1e-9)


def test_permuting_images_inside_a_group(gen):
    x = torch.randn(8, 20, 10, generator=gen, dtype=torch.float64)
    local, glob = kmeans_labels(x, 3, 4, 4)
    perm = torch.tensor([3, 1, 0, 2, 5, 7, 6, 4])  # stays inside groups {0..3}, {4..7}
    kw = dict(global_clusters=4, group_size=4, m_dim="pooled")
    a = dse_ext.dse(x, local_labels=local, global_labels=glob, **kw)
    b = dse_ext.dse(x[perm], local_labels=local[perm], global_labels=glob[perm], **kw)
    assert_outputs_close(a, b, rtol=1e-9)


def test_scale_invariance_without_normalization(gen):
    x = torch.randn(6, 30, 10, generator=gen, dtype=torch.float64)
    local, glob = kmeans_labels(x, 3, 4, 3)
    kw = dict(normalize=False, global_clusters=4, group_size=3, local_labels=local, global_labels=glob)
    a, b = dse_ext.dse(x, **kw), dse_ext.dse(x * 37.5, **kw)
    for f in FIELDS:
        if f != "avg_l2":
            torch.testing.assert_close(getattr(a, f), getattr(b, f), rtol=1e-10, atol=0)
    torch.testing.assert_close(b.avg_l2, 37.5 * a.avg_l2)


def test_m_dim_is_one_for_orthonormal_tokens(gen):
    # 4 images whose tokens at every position are orthonormal across images.
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen, dtype=torch.float64))
    x = q[: 4 * 16].reshape(16, 4, 64).transpose(0, 1).contiguous()  # (B=4, N=16, d=64), all 64 rows orthonormal
    out = dse_ext.dse(x, global_clusters=4, m_dim="pooled")
    torch.testing.assert_close(out.m_dim, torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    out = dse_ext.dse(x, global_clusters=4)  # every position matrix has orthonormal rows too
    torch.testing.assert_close(out.m_dim, torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=0)


def test_separated_clusters_give_large_separability(gen):
    B, N, d, k = 8, 48, 32, 3
    centres = torch.nn.functional.normalize(torch.randn(k, d, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.arange(N).remainder(k).repeat(B, 1)
    x = centres[labels] + 0.001 * torch.randn(B, N, d, generator=gen, dtype=torch.float64)
    out = dse_ext.dse(x, local_clusters=k, global_clusters=k, group_size=4)
    assert out.m_inter > 20 * out.m_intra
    noise = dse_ext.dse(torch.randn(B, N, d, generator=gen, dtype=torch.float64), local_clusters=k,
                        global_clusters=k, group_size=4)
    assert out.m_inter - out.m_intra > noise.m_inter - noise.m_intra + 0.5


def test_smaller_last_group_is_used(gen):
    x = torch.randn(10, 20, 8, generator=gen, dtype=torch.float64)
    kw = dict(global_clusters=4, group_size=4)
    full = dse_ext.dse(x, **kw)
    cut = dse_ext.dse(x[:8], **kw)
    assert not torch.equal(full.m_inter, cut.m_inter)
    assert_outputs_close(dse_ext.dse(x, backend="reference", **kw), full, rtol=1e-10)


def test_user_labels_with_missing_clusters(gen):
    x = torch.randn(4, 12, 6, generator=gen, dtype=torch.float64)
    glob = torch.randint(0, 3, (4, 12), generator=gen)  # clusters 3..5 never used
    local = torch.randint(0, 2, (4, 12), generator=gen)
    kw = dict(local_clusters=3, global_clusters=6, group_size=2, local_labels=local, global_labels=glob)
    a, b = dse_ext.dse(x, backend="ext", **kw), dse_ext.dse(x, backend="reference", **kw)
    assert_outputs_close(a, b, rtol=1e-10)
    assert all(math.isfinite(v) for v in a.to_dict().values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(gen, dtype):
    x = torch.randn(4, 30, 16, generator=gen)
    out = dse_ext.dse(x.to(dtype), global_clusters=5)
    ref = dse_ext.dse(x.to(dtype).float(), global_clusters=5)
    assert out.dse.dtype == torch.float32
    assert_outputs_close(out, ref, rtol=0)


def test_non_contiguous_features(gen):
    big = torch.randn(6, 40, 32, generator=gen, dtype=torch.float64)
    view = big[:, ::2, 1::2]
    assert not view.is_contiguous()
    assert_outputs_close(dse_ext.dse(view, global_clusters=5), dse_ext.dse(view.contiguous(), global_clusters=5), rtol=0)


def test_reference_backend_needs_no_extension_call(gen, monkeypatch):
    x = torch.randn(3, 20, 8, generator=gen, dtype=torch.float64)

    def boom(*args, **kwargs):
        raise AssertionError("compiled op called")

    monkeypatch.setattr(dse_ext.functional, "kmeans", boom)
    out = dse_ext.dse(x, global_clusters=4, backend="reference")
    assert math.isfinite(float(out.dse))
