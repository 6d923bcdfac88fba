"""Faults of the results table: concurrent writers, SIGKILL and resume, checkpoint identity,
settings of a resumed run, training order, permissions, bad CSVs, and `dse` errors before work."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from dse_ext import cli
from dse_ext.locking import TableInUseError, TableLock, lock_path
from dse_ext.results import read_results, split_training_order, training_order, write_results
from dse_ext.scoring import SettingsMismatchError, score_checkpoints, score_features
from dse_ext.selection import select_checkpoints

KW = dict(global_clusters=8, progress=False)
CLI_KW = ["--global-clusters", "8", "--no-progress"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _features(folder, gen, names, shape=(16, 16, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        torch.save(torch.randn(*shape, generator=gen), folder / name)
        paths.append(folder / name)
    return paths


def _dse(*args, cwd):
    return subprocess.Popen([sys.executable, "-m", "dse_ext", *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# --- one writer at a time ---------------------------------------------------------------------


def test_a_table_locked_by_another_process_is_refused_before_any_work(tmp_path, gen):
    _features(tmp_path, gen, ["f_ep1.pt", "f_ep2.pt"])
    out = tmp_path / "r.csv"
    with TableLock(out):  # this test process is "the other writer"
        with pytest.raises(TableInUseError, match=f"in use by PID {os.getpid()}"):
            score_features([str(tmp_path / "f_*.pt")], out=out, **KW)
        (tmp_path / "alias.csv").symlink_to(out)  # another spelling of the same table
        with pytest.raises(TableInUseError):
            score_features([str(tmp_path / "f_*.pt")], out=tmp_path / "alias.csv", **KW)
        proc = _dse("score", "--features", "f_*.pt", "--out", "r.csv", *CLI_KW, cwd=tmp_path)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert f"in use by PID {os.getpid()}" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing was written by the refused runs
    assert not lock_path(out).exists()  # released and removed
    report = score_features([str(tmp_path / "f_*.pt")], out=tmp_path / "alias.csv", **KW)
    assert len(report.scored) == 2
    assert (tmp_path / "alias.csv").is_symlink() and len(read_results(out)) == 2  # written through the link


def test_two_processes_racing_on_one_table_lose_nothing(tmp_path, gen):
    _features(tmp_path, gen, [f"a_ep{i}.pt" for i in range(6)], shape=(48, 32, 16))
    _features(tmp_path, gen, [f"b_ep{i}.pt" for i in range(6, 12)], shape=(48, 32, 16))
    procs = {name: _dse("score", "--features", f"{name}_*.pt", "--out", "r.csv", *CLI_KW, cwd=tmp_path)
             for name in ("a", "b")}
    results = {name: (proc.wait(timeout=300), proc.stderr.read()) for name, proc in procs.items()}
    rows = read_results(tmp_path / "r.csv")
    names = {r["checkpoint"] for r in rows}
    for name, (code, err) in results.items():
        mine = {f"{name}_ep{i}.pt" for i in (range(6) if name == "a" else range(6, 12))}
        if code == 0:
            assert mine <= names, f"rows of {name} lost: {sorted(mine - names)}"
        else:  # refused, with the reason, and nothing of its own in the table
            assert code == 2 and "in use by PID" in err and not (mine & names), err
    assert any(code == 0 for code, _ in results.values())
    # The refused one (if any) run again afterwards: now everything is there, each once.
    for name, (code, _) in results.items():
        if code != 0:
            rerun = _dse("score", "--features", f"{name}_*.pt", "--out", "r.csv", *CLI_KW, cwd=tmp_path)
            assert rerun.wait(timeout=300) == 0
    rows = read_results(tmp_path / "r.csv")
    assert sorted(r["epoch"] for r in rows) == list(range(12))


def test_sigkill_mid_run_then_resume_keeps_finished_rows_and_completes(tmp_path, gen):
    _features(tmp_path, gen, [f"f_ep{i:02d}.pt" for i in range(16)], shape=(64, 48, 16))
    out = tmp_path / "r.csv"
    proc = _dse("score", "--features", "f_*.pt", "--out", "r.csv", *CLI_KW, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(read_results(out)) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed: make the files larger"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = read_results(out)  # a complete table, never a truncated one
    assert 2 <= len(before) < 16
    resumed = _dse("score", "--features", "f_*.pt", "--out", "r.csv", *CLI_KW, cwd=tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err  # the dead run's lock does not block
    after = read_results(out)
    assert [r["epoch"] for r in after] == list(range(16))
    by_file = {r["file"]: r for r in after}
    for row in before:  # finished rows kept exactly as they were
        assert by_file[row["file"]] == row
    assert f"{len(before)} already done" in err


# --- which checkpoint a row is -----------------------------------------------------------------


def test_relative_absolute_and_linked_spellings_are_one_checkpoint(tmp_path, gen, monkeypatch):
    run = tmp_path / "run"
    _features(run, gen, ["f_ep1.pt", "f_ep2.pt"])
    (tmp_path / "link").symlink_to(run)
    out = tmp_path / "tables" / "r.csv"
    monkeypatch.chdir(tmp_path)
    first = score_features(["run/f_ep1.pt", "run/f_ep2.pt"], out=out, **KW)
    assert len(first.scored) == 2
    again = score_features([str(run / "f_ep1.pt"), "link/f_ep2.pt", "./run/../run/f_ep1.pt"], out=out, **KW)
    assert again.scored == [] and len(again.skipped) == 2
    rows = read_results(out)
    assert len(rows) == 2 and {r["file"] for r in rows} == {"../run/f_ep1.pt", "../run/f_ep2.pt"}
    # The table and the run moved together: the rows still match (paths are relative to the table).
    moved = tmp_path / "moved"
    moved.mkdir()
    os.rename(run, moved / "run")
    os.rename(tmp_path / "tables", moved / "tables")
    monkeypatch.chdir(moved)
    assert score_features(["run/f_ep1.pt"], out="tables/r.csv", **KW).skipped == ["run/f_ep1.pt"]


def test_a_rewritten_checkpoint_is_scored_again(tmp_path, gen):
    paths = _features(tmp_path, gen, ["f_ep1.pt", "f_ep2.pt"])
    out = tmp_path / "r.csv"
    score_features([str(p) for p in paths], out=out, **KW)
    old = {r["checkpoint"]: r for r in read_results(out)}
    torch.save(torch.randn(20, 16, 8, generator=gen), paths[1])  # last.ckpt overwritten by training
    report = score_features([str(p) for p in paths], out=out, **KW)
    assert report.changed == [str(paths[1])] and report.scored == [str(paths[1])]
    assert report.skipped == [str(paths[0])]
    new = {r["checkpoint"]: r for r in read_results(out)}
    assert len(new) == 2 and new[str(paths[0])] == old[str(paths[0])]
    assert new[str(paths[1])]["dse"] != old[str(paths[1])]["dse"] and new[str(paths[1])]["num_images"] == 20


# --- settings ----------------------------------------------------------------------------------


def test_resume_with_other_settings_is_refused_naming_them_and_rescore_replaces(tmp_path, gen):
    paths = [str(p) for p in _features(tmp_path, gen, ["f_ep1.pt", "f_ep2.pt"])]
    out = tmp_path / "r.csv"
    score_features(paths[:1], out=out, seed=0, **KW)
    with pytest.raises(SettingsMismatchError, match=r"seed \(--seed\): 0 in the table, 1 now.*--rescore"):
        score_features(paths, out=out, seed=1, **KW)
    with pytest.raises(SettingsMismatchError, match=r"dse.local_clusters \(--local-clusters\): 3 in the table, 2 now"):
        score_features(paths, out=out, local_clusters=2, **KW)
    with pytest.raises(SettingsMismatchError, match=r"dse.max_iters"):
        score_features(paths, out=out, max_iters=5, **KW)
    assert len(read_results(out)) == 1  # untouched by the refusals
    report = score_features(paths, out=out, seed=1, rescore=True, **KW)
    assert len(report.scored) == 2
    rows = read_results(out)
    assert len(rows) == 2 and all(r["settings"]["seed"] == 1 for r in rows)
    # Explicit defaults are the same settings as implicit ones.
    assert score_features(paths, out=out, seed=1, local_clusters=3, **KW).skipped == paths


def test_a_table_without_recorded_settings_is_refused_unless_rescored(tmp_path, gen):
    paths = [str(p) for p in _features(tmp_path, gen, ["f_ep1.pt"])]
    out = tmp_path / "old.csv"
    out.write_text("checkpoint,epoch,step,dse,m_inter,m_intra,m_intra_image,m_intra_batch,m_dim,avg_l2,num_images,"
                   f"seconds\n{paths[0]},1,,0.1,0.2,0.3,0.3,0.3,0.2,1.0,16,0.1\n")
    with pytest.raises(ValueError, match="no recorded settings"):
        score_features(paths, out=out, **KW)
    assert len(score_features(paths, out=out, rescore=True, **KW).scored) == 1


def test_checkpoint_settings_model_images_num_images_are_checked_before_scoring(tmp_path, gen, monkeypatch):
    pytest.importorskip("timm")
    pytest.importorskip("PIL.Image")
    from scoring_data import MODEL_KWARGS

    image_dir = tmp_path / "images"
    image_dir.mkdir()
    from PIL import Image

    for i in range(6):
        Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=gen, dtype=torch.uint8).numpy()).save(
            image_dir / f"{i}.png")
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **MODEL_KWARGS)
    ckpt = tmp_path / "ckpt_ep1.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "r.csv"
    common = dict(model="vit_tiny_patch16_224", model_kwargs=MODEL_KWARGS, images=image_dir, out=out, num_images=6,
                  batch_size=3, dse_batch=6, image_size=32, **KW)
    assert len(score_checkpoints([ckpt], **common).scored) == 1
    calls = []
    from dse_ext import checkpoints

    monkeypatch.setattr(checkpoints, "load_weights", lambda *a, **k: calls.append(a))
    for change, pattern in [(dict(num_images=4), r"num_images \(--num-images\): 6 in the table, 4 now"),
                            (dict(model_kwargs={**MODEL_KWARGS, "depth": 2}), r"model_kwargs.depth"),
                            (dict(layer=2), r"layer \(--layer\)"),
                            (dict(rename=[r"^norm\.=norm."]), r"rename_keys \(--rename-keys\): None in the table"),
                            (dict(dtype="bfloat16"), r"dtype"),
                            (dict(image_size=24), r"image_size \(--image-size\)")]:
        with pytest.raises(SettingsMismatchError, match=pattern):
            score_checkpoints([ckpt], **{**common, **change})
    # Other image content (a file changed) is another set of images; a moved folder is not.
    Image.fromarray(torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()).save(image_dir / "0.png")
    with pytest.raises(SettingsMismatchError, match=r"images_digest \(--images\)"):
        score_checkpoints([ckpt], **common)
    assert calls == []  # no checkpoint was loaded by any refused run
    monkeypatch.undo()

    # A checkpoint whose keys need renaming, through the command line; the rules are a setting.
    renamed = tmp_path / "renamed_ep2.pth"
    torch.save({k.replace("blocks.", "layers."): v for k, v in model.state_dict().items()}, renamed)
    out2 = tmp_path / "r2.csv"
    argv = ["score", "--model", "vit_tiny_patch16_224", "--model-kwargs", '{"img_size": 32, "patch_size": 8}',
            "--checkpoints", str(renamed), "--images", str(image_dir), "--out", str(out2), "--num-images", "6",
            "--dse-batch", "6", "--image-size", "32", *CLI_KW]
    assert cli.main(argv) == 1  # blocks.* missing: reported as a failed checkpoint
    assert cli.main(argv + ["--rename-keys", r"^layers\.=blocks.", "--rescore"]) == 0
    rows = read_results(out2)
    assert len(rows) == 1 and rows[0]["settings"]["rename_keys"] == [[r"^layers\.", "blocks."]]
    assert cli.main(argv + ["--rename-keys", "(oops=x"]) == 2


# --- training order and selection ------------------------------------------------------------


def _row(name, epoch=None, step=None, value=0.0, settings=None):
    return {"checkpoint": name, "epoch": epoch, "step": step, "dse": value, "m_inter": value, "m_intra": 0.0,
            "m_intra_image": 0.0, "m_intra_batch": 0.0, "m_dim": 0.5 + 0.01 * value, "avg_l2": 1.0,
            "num_images": 8, "seconds": 0.0, "settings": settings}


def test_numbered_checkpoints_are_ordered_numerically_and_unnumbered_ones_are_set_apart():
    rows = [_row(f"checkpoint{e:04d}.pth" if e < 100 else "checkpoint.pth", e if e < 100 else None)
            for e in (10, 2, 1, 100, 11, 12)]
    rows.insert(2, _row("last.ckpt"))
    numbered, unnumbered = split_training_order(rows)
    assert [r["epoch"] for r in numbered] == [1, 2, 10, 11, 12]
    assert [r["checkpoint"] for r in unnumbered] == ["last.ckpt", "checkpoint.pth"]
    assert [r["checkpoint"] for r in training_order(rows)][-2:] == ["last.ckpt", "checkpoint.pth"]
    for r, v in zip(rows, (5, 1, 9, 0, 9, 2, 3)):
        r["m_inter"], r["m_dim"] = float(v), 0.5 + 0.01 * v
    with pytest.warns(UserWarning, match="excluded from selection.*last.ckpt, checkpoint.pth"):
        selection = select_checkpoints(rows, top=2, window=1)
    assert selection.excluded == ["last.ckpt", "checkpoint.pth"]
    assert [r["epoch"] for r in selection.rows] == [1, 2, 10, 11, 12]
    assert "excluded" in selection.format_table() and selection.to_dict()["excluded"] == selection.excluded


def test_selection_refuses_duplicates_mixed_runs_and_mixed_settings():
    with pytest.raises(ValueError, match="appears twice"):
        select_checkpoints([_row("a_ep1.pt", 1), _row("a_ep2.pt", 2), _row("a_ep1.pt", 1)])
    with pytest.raises(ValueError, match="both at epoch 2.*mixing two runs"):
        select_checkpoints([_row("a/ep1.pt", 1), _row("a/ep2.pt", 2), _row("b/ep2.pt", 2)])
    with pytest.raises(ValueError, match="different settings.*seed"):
        select_checkpoints([_row("ep1.pt", 1, settings={"seed": 0}), _row("ep2.pt", 2, settings={"seed": 1})])


def test_lambda_refuses_m_dim_spread_at_rounding_level():
    rows = [_row(f"ep{i}.pt", i, value=float(i)) for i in range(4)]
    for i, r in enumerate(rows):
        r["m_dim"] = 0.75 * (1 + 1e-8 * i)
    with pytest.raises(ValueError, match="hardly varies.*lam explicitly"):
        select_checkpoints(rows)
    assert select_checkpoints(rows, lam=1.0).lam == 1.0


# --- the file itself ---------------------------------------------------------------------------


def test_table_is_written_with_ordinary_permissions_and_keeps_a_chosen_mode(tmp_path):
    out = tmp_path / "r.csv"
    old = os.umask(0o022)
    try:
        write_results(out, [_row("a.pt", 1)])
        assert out.stat().st_mode & 0o777 == 0o644
        os.chmod(out, 0o664)
        write_results(out, [_row("a.pt", 1), _row("b.pt", 2)])
        assert out.stat().st_mode & 0o777 == 0o664
    finally:
        os.umask(old)
    assert [r["checkpoint"] for r in read_results(out)] == ["a.pt", "b.pt"]
    assert not [p for p in tmp_path.iterdir() if p.name != "r.csv"]  # no temporary left behind


def test_csvs_with_a_bom_are_read_and_latin1_ones_are_refused_naming_the_file(tmp_path, capsys):
    rows = [_row(f"ep{i}.pt", i, value=float(i % 3)) for i in range(5)]
    write_results(tmp_path / "r.csv", rows)
    text = (tmp_path / "r.csv").read_text(encoding="utf-8")
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8-sig")
    assert [r["checkpoint"] for r in read_results(tmp_path / "bom.csv")] == [r["checkpoint"] for r in rows]
    (tmp_path / "latin1.csv").write_bytes(text.replace("ep1.pt", "épo1.pt").encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.csv: not UTF-8 text"):
        read_results(tmp_path / "latin1.csv")
    assert cli.main(["select", str(tmp_path / "latin1.csv")]) == 2
    err = capsys.readouterr().err
    assert "latin1.csv: not UTF-8" in err and len(err.strip().splitlines()) == 1


# --- `dse` errors before work ------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--dse-batch", "0"], "--dse-batch: must be >= 2"),
    (["--image-size", "-3"], "--image-size: must be >= 1"),
    (["--seed", "1.5"], "--seed: '1.5' is not an integer"),
    (["--seed", str(2**63)], "seed must be in [0, 2**63)"),
    (["--model-kwargs", "[1, 2]"], "must be a JSON object"),
    (["--model-kwargs", "{img_size: 3}"], "not valid JSON"),
    (["--model", "no_such_model_xyz"], "unknown timm model 'no_such_model_xyz'"),
    (["--model-kwargs", '{"no_such_kwarg": 1}'], "do not fit vit_tiny_patch16_224"),
    (["--device", "cuda:7"], "device cuda:7"),
    (["--device", "banana"], "device"),
    (["--out", "IS_A_DIR"], "is a directory"),
    (["--out", "A_FILE/r.csv"], "is a file, not a folder"),
    (["--num-images", "4", "--dse-batch", "2", "--local-clusters", "200"], "too few tokens"),
    (["--images", "NO_DIR"], "not a directory of images"),
])
def test_dse_score_input_mistakes_exit_2_with_one_line_and_no_work(tmp_path, args, message, capsys, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "IS_A_DIR").mkdir()
    (tmp_path / "A_FILE").write_text("x")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "ck_ep1.pth").write_bytes(b"never read")
    argv = {"--model": "vit_tiny_patch16_224", "--model-kwargs": '{"img_size": 32, "patch_size": 8}',
            "--images": "imgs", "--out": "r.csv", "--num-images": "8", "--dse-batch": "8"}
    for flag, value in zip(args[::2], args[1::2]):
        argv[flag] = value
    flat = ["score", "--checkpoints", "ck_ep1.pth", *[x for kv in argv.items() for x in kv], *CLI_KW]
    if "--device" in args and torch.cuda.is_available() and args[1] != "banana" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that GPU")
    assert _exit_code(flat) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.csv").exists() and not list(tmp_path.glob("r.csv*"))


def _exit_code(argv) -> int:
    """``dse argv``'s exit status, whether argparse exits or main returns."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def test_pickle_refusal_names_unsafe_load(tmp_path):
    import pathlib

    from dse_ext.checkpoints import CheckpointError, read_checkpoint

    path = tmp_path / "ck.pth"
    torch.save({"output_dir": pathlib.PurePosixPath("runs"), "weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="--unsafe-load"):
        read_checkpoint(path)
