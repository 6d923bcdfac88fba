"""Model selection by DSE_λ (dse_ext.selection) and the results plot (dse_ext.plotting)."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from dse_ext.results import parse_epoch_step, write_results
from dse_ext.selection import Selection, dse_lambda, local_maxima, paper_lambda, select_checkpoints

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_rows(m_inter, m_intra, m_dim, names=None):
    """Result rows in training order (epoch = position) for the given components."""
    names = names or [f"epoch={i}.ckpt" for i in range(len(m_inter))]
    return [
        {"checkpoint": name, "epoch": i, "step": None, "dse": a - b + c, "m_inter": a, "m_intra": b, "m_dim": c}
        for i, (name, a, b, c) in enumerate(zip(names, m_inter, m_intra, m_dim))
    ]


# --- paper_lambda / dse_lambda ------------------------------------------------------------


def test_paper_lambda_hand_computed():
    # M_inter − M_intra = [0, 2, 4] (std 2·sqrt(2/3)), M_dim = [1, 2, 3] (std sqrt(2/3)) → λ = 2.
    assert paper_lambda([1.0, 3.0, 5.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == pytest.approx(2.0)
    # Only the spread matters: an offset on M_dim changes nothing, a negative trend keeps λ > 0.
    assert paper_lambda([0.0, 2.0, 4.0], [0.0, 0.0, 0.0], [11.0, 12.0, 13.0]) == pytest.approx(2.0)
    assert paper_lambda([4.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.5, 1.0]) == pytest.approx(4.0)


def test_paper_lambda_two_points():
    assert paper_lambda([0.0, 3.0], [1.0, 1.0], [0.0, 1.0]) == pytest.approx(3.0)


def test_dse_lambda_values():
    values = dse_lambda([1.0, 3.0, 5.0], [1.0, 1.0, 1.0], [1.0, 2.0, 3.0], 2.0)
    assert isinstance(values, np.ndarray) and values.shape == (3,)
    np.testing.assert_allclose(values, [2.0, 6.0, 10.0])
    # λ = 1 is the official form M_inter − M_intra + M_dim.
    np.testing.assert_allclose(dse_lambda([0.5, 0.7], [0.2, 0.1], [0.3, 0.4], 1.0), [0.6, 1.0])


@pytest.mark.parametrize(
    "args, match",
    [
        (([1.0], [0.0], [1.0]), "at least 2"),
        (([1.0, 2.0], [0.0, 0.0], [1.0, 2.0, 3.0]), "lengths"),
        (([1.0, math.nan], [0.0, 0.0], [1.0, 2.0]), "NaN"),
        (([1.0, 2.0], [0.0, 0.0], [1.0, math.inf]), "NaN/Inf"),
        (([1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.1, 0.1, 0.1]), "constant"),
    ],
)
def test_paper_lambda_errors(args, match):
    with pytest.raises(ValueError, match=match):
        paper_lambda(*args)


def test_constant_m_dim_message_suggests_lam():
    with pytest.raises(ValueError, match="lam") as info:
        paper_lambda([1.0, 2.0], [0.0, 0.0], [0.3, 0.3])
    assert "undefined" in str(info.value)


def test_dse_lambda_rejects_non_finite_lam():
    with pytest.raises(ValueError, match="finite"):
        dse_lambda([1.0], [0.0], [1.0], math.nan)


# --- local_maxima -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, window, expected",
    [
        ([1, 3, 2, 5, 4], 1, [1, 3]),
        ([1, 3, 2, 5, 4], 2, [3]),
        ([5, 1, 1, 1, 6], 2, [0, 4]),  # both ends: truncated windows
        ([1, 2, 3, 4], 1, [3]),  # monotone: the last index only
        ([1, 4, 4, 2], 1, [1, 2]),  # a plateau: every index of it counts
        ([2, 2, 2], 5, [0, 1, 2]),  # constant: all plateau
        ([1, 3, 2, 5, 4], 0, [0, 1, 2, 3, 4]),  # window 0: every index
        ([7.0], 2, [0]),
        ([], 2, []),
    ],
)
def test_local_maxima_hand_cases(values, window, expected):
    assert local_maxima(values, window) == expected


def test_local_maxima_default_window_is_two():
    assert local_maxima([1, 3, 2, 5, 4]) == [3]


@pytest.mark.parametrize("window", [-1, 1.5, True, "2"])
def test_local_maxima_bad_window(window):
    with pytest.raises(ValueError, match="window"):
        local_maxima([1.0, 2.0], window)


# --- select_checkpoints -------------------------------------------------------------------


def test_select_uses_paper_lambda_and_local_maxima():
    m_inter = [1.0, 2.0, 1.5, 3.0, 2.5, 2.0, 4.0]
    m_intra = [0.5, 0.5, 0.6, 0.4, 0.5, 0.5, 0.3]
    m_dim = [0.2, 0.3, 0.1, 0.4, 0.6, 0.2, 0.5]
    rows = make_rows(m_inter, m_intra, m_dim)
    selection = select_checkpoints(rows)
    lam = paper_lambda(m_inter, m_intra, m_dim)
    scores = dse_lambda(m_inter, m_intra, m_dim, lam)
    assert selection.lam == pytest.approx(lam)
    np.testing.assert_allclose([row["dse_lambda"] for row in selection.rows], scores)
    assert selection.candidates == local_maxima(scores, 2)
    assert selection.selected == sorted(selection.candidates, key=lambda i: -scores[i])[:3]
    assert selection.best["checkpoint"] == rows[int(np.argmax(scores))]["checkpoint"]
    assert (selection.window, selection.top) == (2, 3)
    assert "dse_lambda" not in rows[0]  # the caller's rows are left untouched


def test_select_top_ordering_ties_go_to_earlier():
    # With λ = 1, M_intra = M_dim = 0: DSE_λ = M_inter. Window 1 maxima: 0, 2, 4, 6.
    values = [3.0, 0.0, 5.0, 0.0, 3.0, 0.0, 5.0]
    rows = make_rows(values, [0.0] * 7, [0.0] * 7)
    selection = select_checkpoints(rows, window=1, lam=1.0, top=3)
    assert selection.candidates == [0, 2, 4, 6]
    assert selection.selected == [2, 6, 0]
    assert select_checkpoints(rows, window=1, lam=1.0, top=10).selected == [2, 6, 0, 4]
    assert select_checkpoints(rows, window=1, lam=1.0, top=1).selected == [2]


def test_select_explicit_lam_and_single_row():
    rows = make_rows([1.0], [0.25], [0.5])
    with pytest.raises(ValueError, match="lam"):
        select_checkpoints(rows)
    selection = select_checkpoints(rows, lam=2.0)
    assert selection.lam == 2.0
    assert selection.selected == [0] and selection.candidates == [0]
    assert selection.best["dse_lambda"] == pytest.approx(1.75)


def test_select_drops_nan_rows_with_warning():
    rows = make_rows([1.0, 2.0, 3.0, 2.0, 1.0], [0.0] * 5, [0.1, 0.3, 0.2, 0.5, 0.4])
    rows[1]["m_dim"] = math.nan
    rows[3]["m_intra"] = None
    with pytest.warns(UserWarning, match=r"epoch=1\.ckpt.*epoch=3\.ckpt"):
        selection = select_checkpoints(rows)
    assert [row["checkpoint"] for row in selection.rows] == ["epoch=0.ckpt", "epoch=2.ckpt", "epoch=4.ckpt"]
    assert selection.lam == pytest.approx(paper_lambda([1.0, 3.0, 1.0], [0.0] * 3, [0.1, 0.2, 0.4]))


def test_select_all_rows_dropped():
    rows = make_rows([1.0, 2.0], [0.0, 0.0], [math.nan, math.nan])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no checkpoint"):
        select_checkpoints(rows)
    with pytest.raises(ValueError, match="no checkpoint"):
        select_checkpoints([])


def test_select_constant_m_dim_needs_lam():
    rows = make_rows([1.0, 2.0, 3.0], [0.0] * 3, [0.5] * 3)
    with pytest.raises(ValueError, match="constant"):
        select_checkpoints(rows)
    assert select_checkpoints(rows, lam=1.0).best["checkpoint"] == "epoch=2.ckpt"


@pytest.mark.parametrize("kwargs", [{"top": 0}, {"top": -2}, {"top": 1.0}, {"window": -1}, {"window": 0.5}])
def test_select_bad_settings(kwargs):
    rows = make_rows([1.0, 2.0], [0.0, 0.0], [0.1, 0.2])
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        select_checkpoints(rows, **kwargs)


def test_select_csv_round_trip_in_training_order(tmp_path):
    names = [f"run/epoch={e}-step={100 * e}.ckpt" for e in (0, 2, 5, 10, 20, 40)]
    m_inter = [0.2, 0.9, 0.7, 1.1, 1.3, 1.0]
    m_intra = [0.1, 0.2, 0.1, 0.2, 0.3, 0.2]
    m_dim = [0.05, 0.07, 0.02, 0.06, 0.03, 0.09]
    rows = []
    for name, a, b, c in zip(names, m_inter, m_intra, m_dim):
        epoch, step = parse_epoch_step(name)
        rows.append({"checkpoint": name, "epoch": epoch, "step": step, "dse": a - b + c,
                     "m_inter": a, "m_intra": b, "m_dim": c, "num_images": 64, "seconds": 1.5})
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != rows
    path = tmp_path / "results.csv"
    write_results(path, shuffled)

    selection = select_checkpoints(path, window=1)
    assert [row["checkpoint"] for row in selection.rows] == names
    assert [row["epoch"] for row in selection.rows] == [0, 2, 5, 10, 20, 40]
    lam = paper_lambda(m_inter, m_intra, m_dim)
    scores = dse_lambda(m_inter, m_intra, m_dim, lam)
    assert selection.lam == pytest.approx(lam)
    np.testing.assert_allclose([row["dse_lambda"] for row in selection.rows], scores)
    assert selection.candidates == local_maxima(scores, 1)
    assert selection.selected == sorted(selection.candidates, key=lambda i: (-scores[i], i))[:3]
    # The string form of the path works as well.
    assert select_checkpoints(str(path), window=1).selected == selection.selected


# --- Selection output ---------------------------------------------------------------------


@pytest.fixture
def selection() -> Selection:
    rows = make_rows([1.0, 2.0, 1.5, 3.0, 2.5, 2.0, 4.0], [0.5] * 7, [0.2, 0.3, 0.1, 0.4, 0.6, 0.2, 0.5])
    rows[2]["dse"] = math.nan  # a non-finite official DSE must not break JSON
    rows[5]["step"] = 7
    return select_checkpoints(rows, window=1, top=2)


def test_to_dict_is_json_serialisable(selection):
    data = json.loads(json.dumps(selection.to_dict(), allow_nan=False))
    assert data["lam"] == pytest.approx(selection.lam)
    assert (data["window"], data["top"]) == (1, 2)
    assert [entry["rank"] for entry in data["selected"]] == [1, 2]
    first = data["selected"][0]
    assert first["checkpoint"] == selection.best["checkpoint"]
    assert first["dse_lambda"] == pytest.approx(selection.best["dse_lambda"])
    assert set(first) == {"rank", "checkpoint", "epoch", "step", "dse_lambda", "dse", "m_inter", "m_intra", "m_dim"}
    assert data["candidates"] == [selection.rows[i]["checkpoint"] for i in selection.candidates]


def test_format_table_lists_selected(selection):
    table = selection.format_table()
    lines = table.splitlines()
    assert "λ = " in lines[0] and f"{selection.lam:.6g}" in lines[0]
    assert lines[1].split()[:2] == ["rank", "checkpoint"]
    assert len(lines) == 2 + len(selection.selected)
    for rank, index in enumerate(selection.selected, start=1):
        assert lines[1 + rank].split()[:2] == [str(rank), selection.rows[index]["checkpoint"]]
    # Aligned: every line of the table has the checkpoint column at the same offset.
    offsets = {line.index(selection.rows[i]["checkpoint"]) for line, i in zip(lines[2:], selection.selected)}
    assert offsets == {lines[1].index("checkpoint")}


# --- plotting -----------------------------------------------------------------------------


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    from dse_ext.plotting import plot_results

    rows = make_rows([1.0, 2.0, 1.5, 3.0, 2.5], [0.5] * 5, [0.2, 0.3, 0.1, 0.4, 0.6])
    path = plot_results(rows, tmp_path / "nested" / "dir" / "dse.png", window=1)
    assert path == tmp_path / "nested" / "dir" / "dse.png"
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)

    # A precomputed selection, rows without epoch or step (x = index), a path without an extension.
    for row in rows:
        row["epoch"] = None
    path = plot_results(None, tmp_path / "plain", selection=select_checkpoints(rows, top=1))
    assert path.read_bytes().startswith(PNG_MAGIC)
