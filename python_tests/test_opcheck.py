"""torch.compile over the ops, and the build information (opcheck of every op on every sample
and device is in test_op_table.py)."""

import torch

g = torch.Generator().manual_seed(0)


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
