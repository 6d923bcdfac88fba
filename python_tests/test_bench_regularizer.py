"""bench/bench_regularizer.py: the floor's arithmetic and a small end-to-end run of the script."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_regularizer.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_regularizer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_counts_what_the_docstring_says(bench):
    B, N, d = 64, 196, 384
    f32, f64 = bench.regularizer_floor_flops(B, N, d, iters_local=5, iters_global=20)
    # k-means: seeding + updates + final assignment of the distance GEMMs, plus the centroid sums
    assert f32 == pytest.approx(2 * B * N * d * 3 * 7 + B * N * d * 5 + 2 * B * N * d * 24 * 22 + B * N * d * 20)

    def term(n):
        m = min(n, d)
        return m * m * max(n, d) + (10 / 3) * m ** 3 + 2 * m ** 3 + 2 * n * d * m

    assert f64 == pytest.approx(B * 3 * term(N / 3) + 24 * term(B * N / 24) + term(B * N))
    # more k-means updates cost more; more tokens cost more
    assert bench.regularizer_floor_flops(B, N, d, 5, 21)[0] > f32
    assert all(b > a for a, b in zip((f32, f64), bench.regularizer_floor_flops(2 * B, N, d, 5, 20)))


def test_floor_of_groups_counts_each_group_s_clusters(bench):
    B, N, d = 12, 196, 384
    whole = bench.regularizer_floor_flops(B, N, d, 5, 20)
    grouped = bench.regularizer_floor_flops(B, N, d, 5, 20, group_size=8)
    assert grouped[0] == whole[0]  # k-means GEMMs do not depend on the grouping

    def term(n):
        m = min(n, d)
        return m * m * max(n, d) + (10 / 3) * m ** 3 + 2 * m ** 3 + 2 * n * d * m

    # 24 clusters of 8·196/24 and 24 of 4·196/24 tokens instead of 24 of 12·196/24
    assert grouped[1] - whole[1] == pytest.approx(24 * (term(8 * N / 24) + term(4 * N / 24) - term(B * N / 24)))
    assert bench.regularizer_floor_flops(B, N, d, 5, 20, group_size=B) == whole
    assert bench.regularizer_floor_flops(B, N, d, 5, 20, group_size=100) == whole


def test_script_prints_the_floor_and_the_ratios(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "12x16x32", "--repeats", "1", "--no-vit",
                          "--no-reference"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines()
            if line.startswith("| 12x16x32 |")]
    assert [r[1] for r in rows] == ["8 images (default, lightly's)", "whole batch"]  # the default, then one group
    for cells in rows:
        assert float(cells[2]) > 0                       # ext fwd+bwd (ms)
        assert float(cells[6]) > 0 and cells[7].endswith("×")  # floor (ms), ext / floor
    assert "floor at 12x16x32, global groups of whole batch:" in out.stdout
    assert "floor at 12x16x32, global groups of 8 images (default, lightly's):" in out.stdout
    assert "GFLOP float64" in out.stdout


def test_script_refuses_a_bad_group_size():
    out = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "12x16x32", "--group-sizes", "0", "--no-vit",
                          "--no-reference", "--no-lightly"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "positive int" in out.stderr


@pytest.mark.parametrize("size", ["64", "64x196", "0x196x384", "64x196x-1"])
def test_script_refuses_a_bad_size_before_timing_anything(size):
    out = subprocess.run([sys.executable, str(SCRIPT), "--sizes", size, "--no-vit", "--no-reference", "--no-lightly"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "BxNxd" in out.stderr and "Traceback" not in out.stderr


def test_lightly_is_timed_side_by_side_when_installed(bench):
    pytest.importorskip("lightly.loss.regularizer.dse")
    result = bench.time_cpu_row("4x16x32", 3, None, True, 2)
    assert result["seconds"] > 0 and result["lightly"] > 0
    floor = result["floor"]
    assert floor["rate32"] > 0 and floor["rate64"] > 0
    assert floor["seconds"] == pytest.approx(floor["gflop32"] / floor["rate32"] + floor["gflop64"] / floor["rate64"])


def test_a_cpu_row_without_lightly_times_ours_and_the_floor(bench, monkeypatch):
    monkeypatch.setitem(sys.modules, "lightly.loss.regularizer.dse", None)  # its import now fails
    for with_lightly in (True, False):
        result = bench.time_cpu_row("4x16x32", 2, 8, with_lightly, 2)
        assert result["seconds"] > 0 and result["lightly"] is None and result["floor"]["seconds"] > 0


def test_eigen_cpu_script_prints_its_tables():
    script = SCRIPT.with_name("bench_eigen_cpu.py")
    out = subprocess.run([sys.executable, str(script), "--rows", "20", "--dim", "12", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| solver") and not line.startswith("| σ")}
    assert float(rows["torch (MKL on x86) dsyevd, float64, with vectors: what the CPU kernels call"][0]) > 0
    errors = [cells for name, cells in rows.items() if name.startswith("p = ")]
    assert len(errors) == 3
    assert all(float(cells[0]) < 1e-10 for cells in errors)  # float64 Gram eigenvalues are exact enough
