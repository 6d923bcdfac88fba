"""Checkpoint scoring: the image subset, the results table, resuming, failures, the CLI, torchrun."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

import dse_ext
from dse_ext import cli
from dse_ext.images import load_image_subset, normalize
from dse_ext.results import parse_epoch_step, read_results, write_results
from dse_ext.scoring import dse_in_chunks, expand_paths, score_checkpoints, score_features

timm = pytest.importorskip("timm")
Image = pytest.importorskip("PIL.Image")

from scoring_data import DSE_KW, MODEL_KWARGS, image_dir, run_dir, vit  # noqa: E402,F401 (fixtures)


def test_image_subset_is_seeded_skips_unreadable_files_and_is_preprocessed(image_dir):
    with pytest.warns(UserWarning) as caught:
        a, paths = load_image_subset(image_dir, 12, seed=3, size=16)
    messages = [str(w.message) for w in caught]
    assert any("broken.jpg" in m for m in messages) and any("only 11 readable" in m for m in messages)
    assert a.shape == (11, 3, 16, 16) and a.dtype == torch.uint8 and len(paths) == 11
    b, paths_b = load_image_subset(image_dir, 5, seed=3, size=16)
    c, paths_c = load_image_subset(image_dir, 5, seed=4, size=16)
    d, _ = load_image_subset(image_dir, 5, seed=3, size=16)
    assert torch.equal(b, d) and paths_b != paths_c
    x = normalize(b)
    assert x.dtype == torch.float32 and -2.2 < x.min() and x.max() < 2.7
    with pytest.raises(ValueError, match=">= 2"):
        load_image_subset(image_dir, 1)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_image_subset(image_dir / "absent", 4)


def test_dse_in_chunks_averages_near_equal_chunks(gen):
    x = torch.randn(10, 16, 8, generator=gen)
    whole = dse_in_chunks(lambda a, b: x[a:b], 10, 10, global_clusters=4)
    assert whole["dse"] == pytest.approx(dse_ext.dse(x, global_clusters=4).dse.item())
    halves = dse_in_chunks(lambda a, b: x[a:b], 10, 5, global_clusters=4)
    first, second = dse_ext.dse(x[:5], global_clusters=4), dse_ext.dse(x[5:], global_clusters=4)
    assert halves["m_dim"] == pytest.approx((first.m_dim.item() + second.m_dim.item()) / 2)
    assert halves["num_images"] == 10


def test_score_checkpoints_writes_resumes_and_skips_bad_ones(tmp_path, image_dir, run_dir):
    out = tmp_path / "results.csv"
    common = dict(model="vit_tiny_patch16_224", model_kwargs=MODEL_KWARGS, images=image_dir, out=out,
                  num_images=8, batch_size=3, dse_batch=8, image_size=32, progress=False, **DSE_KW)
    with pytest.warns(UserWarning, match="broken.jpg"):
        report = score_checkpoints([str(run_dir / "checkpoint00[0-2]0.pth"), str(run_dir / "absent.pth")], **common)
    assert [os.path.basename(r["checkpoint"]) for r in report.rows] == [
        "checkpoint0000.pth", "checkpoint0010.pth", "checkpoint0020.pth"]
    assert [name for name, _ in report.failures] == [str(run_dir / "absent.pth")] and not report.ok
    rows = read_results(out)
    assert [r["epoch"] for r in rows] == [0, 10, 20] and all(r["num_images"] == 8 for r in rows)
    assert len({r["dse"] for r in rows}) == 3  # different networks, different scores

    # Same network and images by hand: the row is exactly this DSE.
    model = vit().eval()
    dse_ext.checkpoints.load_weights(model, run_dir / "checkpoint0010.pth")
    with pytest.warns(UserWarning):
        pixels, _ = load_image_subset(image_dir, 8, seed=0, size=32)
    with torch.no_grad():
        expected = dse_ext.dse(dse_ext.features.dense_features(model, normalize(pixels)), **DSE_KW)
    assert rows[1]["dse"] == pytest.approx(expected.dse.item(), rel=1e-6)
    assert rows[1]["m_intra_batch"] == pytest.approx(expected.m_intra_batch.item(), rel=1e-6)

    # Resume: finished rows are kept as they are, new ones added, the corrupt one reported.
    with pytest.warns(UserWarning):
        again = score_checkpoints([str(run_dir / "*.pth")], **common)
    assert sorted(os.path.basename(s) for s in again.skipped) == [
        "checkpoint0000.pth", "checkpoint0010.pth", "checkpoint0020.pth"]
    assert [os.path.basename(s) for s in again.scored] == ["checkpoint0030.pth"]
    assert [os.path.basename(n) for n, _ in again.failures] == ["checkpoint0040.pth"]
    rows2 = read_results(out)
    assert [r["epoch"] for r in rows2] == [0, 10, 20, 30] and rows2[:3] == rows


def test_score_features_files(tmp_path, gen):
    files = []
    for step in (100, 200):
        path = tmp_path / f"feats_step{step}.pt"
        torch.save(torch.randn(6, 16, 8, generator=gen), path)
        files.append(path)
    torch.save({"features": torch.randn(6, 16, 8, generator=gen)}, tmp_path / "feats_step300.pt")
    torch.save(torch.randn(6, 8), tmp_path / "feats_step400.pt")
    report = score_features([str(tmp_path / "feats_*.pt")], out=tmp_path / "r.csv", progress=False, **DSE_KW)
    assert [r["step"] for r in report.rows] == [100, 200, 300]
    assert report.failures[0][0].endswith("feats_step400.pt") and "(B, N, d)" in report.failures[0][1]
    x = torch.load(files[0])
    assert report.rows[0]["dse"] == pytest.approx(dse_ext.dse(x, **DSE_KW).dse.item(), rel=1e-6)


def test_results_table_round_trip_and_name_parsing(tmp_path):
    rows = [{"checkpoint": "a.pth", "epoch": 1, "step": None, "dse": 0.5, "m_inter": 1.0, "m_intra": 0.75,
             "m_intra_image": 0.5, "m_intra_batch": 1.0, "m_dim": 0.25, "avg_l2": 1.1, "num_images": 8,
             "seconds": 0.1, "file": "a.pth", "file_size": 123, "file_mtime_ns": 1700000000123456789,
             "settings": {"seed": 0, "dse": {"local_clusters": 3}, "model_kwargs": {}}}]
    write_results(tmp_path / "t.csv", rows)
    assert read_results(tmp_path / "t.csv") == rows
    assert parse_epoch_step("epoch=12-step=3400.ckpt") == (12, 3400)
    assert parse_epoch_step("checkpoint_0099.pth.tar") == (99, None)
    assert parse_epoch_step("model_step5000.pt") == (None, 5000)
    assert parse_epoch_step("final.pth") == (None, None)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        read_results(tmp_path / "bad.csv")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        expand_paths([str(tmp_path / "none_*.pth")])


def test_cli_score_and_select(tmp_path, image_dir, run_dir, capsys):
    out = tmp_path / "cli.csv"
    argv = ["score", "--model", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(MODEL_KWARGS),
            "--checkpoints", str(run_dir / "*.pth"), "--images", str(image_dir), "--out", str(out),
            "--num-images", "8", "--image-size", "32", "--batch-size", "4", "--dse-batch", "8",
            "--global-clusters", "8", "--no-progress"]
    with pytest.warns(UserWarning):
        assert cli.main(argv) == 1  # the corrupt checkpoint: reported, the rest written
    err = capsys.readouterr().err
    assert "4 scored" in err and "1 failed" in err and "checkpoint0040.pth" in err
    assert len(read_results(out)) == 4
    assert cli.main(["select", str(out), "--top", "2", "--json", "-"]) == 0
    selection = json.loads(capsys.readouterr().out)
    assert len(selection["selected"]) <= 2 and "lam" in selection
    assert cli.main(["score", "--checkpoints", "x.pth", "--out", str(out)]) == 2
    assert "needs --model and --images" in capsys.readouterr().err


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_two_ranks_write_the_same_table_as_one_process(tmp_path, image_dir, run_dir):
    args = ["-m", "dse_ext", "score", "--model", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(MODEL_KWARGS),
            "--checkpoints", str(run_dir / "checkpoint00[0-3]0.pth"), "--images", str(image_dir),
            "--num-images", "8", "--image-size", "32", "--batch-size", "4", "--dse-batch", "8",
            "--global-clusters", "8", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    one = tmp_path / "one.csv"
    subprocess.run([sys.executable, *args, "--out", str(one)], check=True, env=env, cwd=tmp_path, timeout=300)
    two = tmp_path / "two.csv"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args,
                    "--out", str(two)], check=True, env=env, cwd=tmp_path, timeout=300)
    assert not list(tmp_path.glob("two.csv.rank*"))  # parts merged and removed
    a, b = read_results(one), read_results(two)
    assert [r["checkpoint"] for r in a] == [r["checkpoint"] for r in b] and len(a) == 4
    for ra, rb in zip(a, b):
        for name in dse_ext.results.COMPONENTS:
            assert ra[name] == pytest.approx(rb[name], rel=1e-6), (ra["checkpoint"], name)
