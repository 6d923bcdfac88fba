"""The scores registry and `dse score --scores`: every score from one pass, scores added to a table."""

import sys

import pytest
import torch

import dse_ext
from dse_ext import baselines, cli, scores
from dse_ext.results import read_results
from dse_ext.scores import ScoreBatch, get_score, parse_scores, register_score
from dse_ext.scoring import SettingsMismatchError, score_checkpoints, score_features

timm = pytest.importorskip("timm")
pytest.importorskip("PIL.Image")

from scoring_data import MODEL_KWARGS, image_dir, run_dir, vit  # noqa: E402,F401

ALL = ["dse", "rankme", "dense_rankme", "alpha_req", "lidar"]
KW = dict(model="vit_tiny_patch16_224", model_kwargs=MODEL_KWARGS, num_images=8, dse_batch=8, image_size=32,
          batch_size=4, global_clusters=8, progress=False, lidar_images=4, lidar_views=2)


@pytest.fixture
def registry(monkeypatch):
    """A private copy of the registry: scores registered by a test do not outlive it."""
    monkeypatch.setattr(scores, "_REGISTRY", dict(scores._REGISTRY))
    return scores._REGISTRY


# ---------------------------------------------------------------- the registry
def test_built_in_scores_and_their_columns():
    assert set(ALL) <= set(dse_ext.available_scores())
    assert get_score("dse").columns == ("dse", "m_inter", "m_intra", "m_intra_image", "m_intra_batch", "m_dim",
                                        "avg_l2")
    assert [s.name for s in parse_scores("dse, rankme,dse")] == ["dse", "rankme"]
    assert [s.name for s in parse_scores(None)] == ["dse"]
    with pytest.raises(ValueError, match="unknown score 'rank_me'; the registered scores are"):
        parse_scores("dse,rank_me")
    # α-ReQ: better near 1; the others: higher is better
    assert get_score("alpha_req").value({"alpha_req": 0.9}) > get_score("alpha_req").value({"alpha_req": 1.5})
    assert get_score("rankme").value({"rankme": 3.0}) == 3.0


def test_register_a_score_and_the_rules(registry, gen):
    @register_score("token_norm", description="mean token norm")
    def token_norm(batch):
        return {"token_norm": float(batch.tokens.norm(dim=-1).mean())}

    assert token_norm.__name__ == "token_norm"  # the decorator returns the function
    tokens = torch.randn(4, 6, 3, generator=gen)
    assert get_score("token_norm")(ScoreBatch(tokens, None, 0)) == {"token_norm": pytest.approx(
        float(tokens.norm(dim=-1).mean()))}
    with pytest.raises(ValueError, match="registered already"):
        register_score("token_norm", token_norm)
    with pytest.raises(ValueError, match="columns of the results table itself"):
        register_score("bad", token_norm, columns=("epoch",))
    with pytest.raises(ValueError, match="belong to the score 'rankme'"):
        register_score("rankme2", token_norm, columns=("rankme",))
    with pytest.raises(ValueError, match="must be an identifier"):
        register_score("two words", token_norm)
    register_score("wrong_output", lambda batch: {"other": 1.0})
    with pytest.raises(ValueError, match=r"must return a dict with the columns \['wrong_output'\], got \['other'\]"):
        get_score("wrong_output")(ScoreBatch(tokens, None, 0))


# ---------------------------------------------------------------- scoring checkpoints
def _forward_counter(monkeypatch):
    """Counts images through the patch embedding of every ViT made from here on."""
    calls = []
    original = timm.models.vision_transformer.VisionTransformer._pos_embed

    def counting(self, x):
        calls.append(x.shape[0])
        return original(self, x)

    monkeypatch.setattr(timm.models.vision_transformer.VisionTransformer, "_pos_embed", counting)
    return calls


def test_every_score_from_one_forward_per_image_and_equal_to_the_baselines(tmp_path, image_dir, run_dir, monkeypatch):
    calls = _forward_counter(monkeypatch)
    ckpt = run_dir / "checkpoint0010.pth"
    report = score_checkpoints([ckpt], images=image_dir, out=tmp_path / "r.csv", scores=ALL, **KW)
    assert report.ok
    # 8 images once for every per-chunk score, 4 images x 2 views for LiDAR (plus 2 probe images)
    assert sum(calls) == 2 + 8 + 4 * 2
    (row,) = read_results(tmp_path / "r.csv")
    for column in ["dse", "m_dim", "rankme", "dense_rankme", "alpha_req", "lidar"]:
        assert isinstance(row[column], float), column
    assert row["settings"]["scores"] == {"dse": {}, "rankme": {}, "dense_rankme": {}, "alpha_req": {},
                                         "lidar": {"images": 4, "views": 2}}
    # The same numbers as the baselines on the same features.
    from dse_ext.checkpoints import load_weights
    from dse_ext.features import FeatureExtractor
    from dse_ext.images import load_image_subset, normalize

    net = vit().eval()
    load_weights(net, ckpt)
    pixels, _ = load_image_subset(image_dir, 8, seed=0, size=32, progress=False)
    with torch.inference_mode():
        tokens, pooled = FeatureExtractor(net).with_embeddings(normalize(pixels))
    assert row["rankme"] == pytest.approx(baselines.rankme(pooled), rel=1e-6)
    assert row["dense_rankme"] == pytest.approx(baselines.dense_rankme(tokens), rel=1e-6)
    assert row["alpha_req"] == pytest.approx(baselines.alpha_req(pooled), rel=1e-6)
    assert row["dse"] == pytest.approx(dse_ext.dse(tokens, global_clusters=8).dse.item(), rel=1e-5)


def test_a_score_added_to_a_table_computes_only_that_score(tmp_path, image_dir, run_dir, monkeypatch, registry):
    out = tmp_path / "r.csv"
    ckpts = sorted(run_dir.glob("checkpoint00[0-3]0.pth"))
    first = score_checkpoints(ckpts, images=image_dir, out=out, **KW)
    assert len(first.scored) == 4
    before = {r["checkpoint"]: r for r in read_results(out)}
    dse_calls = []
    dse_score = get_score("dse")
    registry["dse"] = scores.Score("dse", lambda b: dse_calls.append(1) or dse_score.fn(b), dse_score.columns)
    second = score_checkpoints(ckpts, images=image_dir, out=out, scores="dse,rankme", **KW)
    assert second.extended == [str(c) for c in ckpts] and dse_calls == []
    after = {r["checkpoint"]: r for r in read_results(out)}
    for name, row in after.items():
        assert row["dse"] == before[name]["dse"] and isinstance(row["rankme"], float)
        assert set(row["settings"]["scores"]) == {"dse", "rankme"}
    # Asking for a subset later is nothing to do; the table keeps both.
    third = score_checkpoints(ckpts, images=image_dir, out=out, scores="rankme", **KW)
    assert len(third.skipped) == 4 and not third.scored


def test_a_score_asked_again_with_other_options_is_refused(tmp_path, image_dir, run_dir):
    out = tmp_path / "r.csv"
    ckpt = run_dir / "checkpoint0000.pth"
    score_checkpoints([ckpt], images=image_dir, out=out, scores="lidar", **KW)
    with pytest.raises(SettingsMismatchError, match=r"scores\.lidar\.views: 2 in the table, 3 now"):
        score_checkpoints([ckpt], images=image_dir, out=out, scores="lidar", **{**KW, "lidar_views": 3})


def test_saved_features_take_token_scores_and_refuse_views(tmp_path, gen):
    files = []
    for i in range(2):
        path = tmp_path / f"feats_ep{i}.pt"
        torch.save(torch.randn(8, 16, 6, generator=gen), path)
        files.append(path)
    report = score_features(files, out=tmp_path / "f.csv", dse_batch=8, scores="dse,rankme", global_clusters=4,
                            progress=False)
    assert report.ok
    row = read_results(tmp_path / "f.csv")[0]
    x = torch.load(files[0])
    assert row["rankme"] == pytest.approx(baselines.rankme(x.mean(dim=1)), rel=1e-6)  # embeddings: mean tokens
    with pytest.raises(ValueError, match="need augmented views"):
        score_features(files, out=tmp_path / "g.csv", scores="lidar", progress=False)


def test_cli_scores_and_an_imported_score_module(tmp_path, image_dir, run_dir, registry, monkeypatch, capsys):
    (tmp_path / "my_scores.py").write_text(
        "import dse_ext\n"
        "@dse_ext.register_score('token_norm')\n"
        "def token_norm(batch):\n"
        "    return {'token_norm': float(batch.tokens.norm(dim=-1).mean())}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_scores", raising=False)
    out = tmp_path / "r.csv"
    argv = ["score", "--model", "vit_tiny_patch16_224", "--model-kwargs", '{"img_size": 32, "patch_size": 8}',
            "--checkpoints", str(run_dir / "checkpoint0000.pth"), "--images", str(image_dir), "--out", str(out),
            "--num-images", "8", "--dse-batch", "8", "--image-size", "32", "--global-clusters", "8", "--no-progress"]
    assert cli.main(argv + ["--scores", "rankme,token_norm", "--import", "my_scores"]) == 0
    row = read_results(out)[0]
    assert row["dse"] is None and isinstance(row["token_norm"], float) and isinstance(row["rankme"], float)
    assert cli.main(argv + ["--scores", "nope"]) == 2
    assert "unknown score 'nope'" in capsys.readouterr().err
    assert cli.main(argv + ["--import", "no_such_module_here"]) == 2


# ---------------------------------------------------------------- dse select --by
def _rows(**columns):
    n = len(next(iter(columns.values())))
    return [{"checkpoint": f"ckpt_ep{i}.pth", "epoch": i, "m_inter": 1.0, "m_intra": 0.5, "m_dim": 0.1 + 0.01 * i,
             **{k: v[i] for k, v in columns.items()}} for i in range(n)]


def test_select_by_another_score():
    from dse_ext.selection import select_checkpoints

    rows = _rows(rankme=[1.0, 5.0, 2.0, 3.0, 9.0, 1.0], alpha_req=[3.0, 1.1, 2.0, 0.95, 4.0, 2.0])
    by_rankme = select_checkpoints(rows, by="rankme", top=2, window=1)
    assert [by_rankme.rows[i]["epoch"] for i in by_rankme.selected] == [4, 1]
    assert by_rankme.by == "rankme" and by_rankme.to_dict()["selected"][0]["by_value"] == 9.0
    assert "by rankme" in by_rankme.format_table()
    by_alpha = select_checkpoints(rows, by="alpha_req", top=1, window=1)  # nearest 1: 0.95 at epoch 3
    assert by_alpha.best["epoch"] == 3 and by_alpha.best["by_value"] == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="no column 'lidar' to select by"):
        select_checkpoints(rows, by="lidar")
    with pytest.raises(ValueError, match="no meaning when selecting by 'rankme'"):
        select_checkpoints(rows, by="rankme", lam=1.0)
    rows[2]["rankme"] = None
    with pytest.warns(UserWarning, match="missing or non-finite rankme: ckpt_ep2.pth"):
        assert len(select_checkpoints(rows, by="rankme").rows) == 5


def test_cli_select_by(tmp_path, capsys):
    from dse_ext.results import write_results

    path = tmp_path / "r.csv"
    rows = _rows(rankme=[1.0, 5.0, 2.0, 3.0, 9.0, 1.0])
    for row in rows:
        row.update(dse=0.0, m_intra_image=0.5, m_intra_batch=0.5, avg_l2=1.0)
    write_results(path, rows)
    assert cli.main(["select", str(path), "--by", "rankme", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "by rankme" in out and "ckpt_ep4.pth" in out


def test_plot_with_other_scores(tmp_path):
    pytest.importorskip("matplotlib")
    from dse_ext.results import write_results

    path = tmp_path / "r.csv"
    rows = _rows(rankme=[1.0, 5.0, 2.0, 3.0, 9.0, 1.0], alpha_req=[3.0, 1.1, 2.0, 0.95, 4.0, 2.0])
    for row in rows:
        row.update(dse=0.0, m_intra_image=0.5, m_intra_batch=0.5, avg_l2=1.0)
    write_results(path, rows)
    assert cli.main(["plot", str(path), "-o", str(tmp_path / "p.png"), "--scores", "rankme,alpha_req"]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["plot", str(path), "-o", str(tmp_path / "q.png"), "--scores", "lidar"]) == 2
