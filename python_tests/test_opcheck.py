"""torch.library.opcheck on every compiled op (schema, fake kernel, aot dispatch)."""

import pytest
import torch

g = torch.Generator().manual_seed(0)


def samples():
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 24, 5, generator=g, dtype=dtype)
        labels = torch.randint(-1, 4, (3, 24), generator=g)
        c = torch.randn(3, 4, 5, generator=g, dtype=dtype)
        yield "kmeans", (x, torch.tensor([24, 20, 9]), 4, 10, 1e-4, 0, 0)
        yield "kmeans", (x, torch.tensor([24, 24, 24]), 3, 5, 0.0, 7, 1)
        yield "cluster_css", (x, labels, 4)
        yield "effective_rank", (x,)
        yield "effective_rank", (x.transpose(1, 2).contiguous(),)
        yield "effective_rank", (x.reshape(72, 5), torch.randint(0, 72, (6, 4), generator=g))
        yield "nearest_other_centroid_distance", (x, c, labels, None)
        yield "nearest_other_centroid_distance", (x, c, labels, torch.tensor([[1, 0, 1, 1]] * 3, dtype=torch.bool))


@pytest.mark.parametrize("name,args", list(samples()), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    torch.library.opcheck(getattr(torch.ops.dse, name).default, args)


def test_compile_traces_the_ops():
    import dse_ext

    x = torch.randn(4, 16, 8, generator=g)

    def f(x):
        labels = torch.ops.dse.kmeans(x, torch.full((4,), 16, dtype=torch.long), 3, 5, 1e-4, 0, 0)[1]
        v = torch.ops.dse.cluster_css(x, labels, 3)[0]
        return v.sum() + torch.ops.dse.effective_rank(x)[0].sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))
    assert dse_ext.extension_available()


def test_build_info_reports_the_cpu_paths():
    import dse_ext

    info = dse_ext.build_info()
    assert info["extension"] is True and info["version"] == dse_ext.__version__
    assert info["cpu_simd"] in ("avx2", "portable") and isinstance(info["direct_lapack"], bool)
