"""The demo's conclusions: statistics over seeds, plain-words findings, ``report.md`` and ``demo.png``.

Everything here works on plain rows and dicts (the per-checkpoint rows of ``results.csv`` and the
per-trajectory summaries that :mod:`dse_ext.demo.run` builds from :func:`dse_ext.compare.compare_scores`),
so a report can be rebuilt from a finished run's files.

Definitions used in the findings (the thresholds fixed before any run was looked at; the condition
on the spread over seeds, :mod:`dse_ext.demo.verdicts`, added before the five-seed full run was):

* **degradation** of a configuration: on the mIoU curve averaged over its seeds, the last
  checkpoint is at least :data:`DEGRADATION_DROP` below the curve's peak, the peak lies after the
  first :data:`EARLY_FRACTION` of training, and the 95 % interval of the seeds' drops (each seed's
  mIoU at that peak epoch minus its last) lies above zero; it **does not degrade** when that
  interval lies below :data:`DEGRADATION_DROP`;
* DSE_λ **beats** a score on a configuration when their τ differ, paired by seed, by more than
  :data:`TAU_TIE` on average with the interval of the differences above zero (**loses to** in the
  mirror case, **ties with** when the interval lies within ± :data:`TAU_TIE`);
* **selection gains** when the mean mIoU gain of the selected checkpoint over the last one is above
  :data:`NEGLIGIBLE` with its interval above zero (it **loses** in the mirror case; **no effect**
  when the interval lies within ± :data:`NEGLIGIBLE`);
* the **regularizer helps** when the paired (same seed) change of the last checkpoint's mIoU against
  the plain run passes the same test (it **hurts**, or has **no effect**, likewise).

Anything else is **not established**: the seeds do not decide it, and another machine may see it
either way.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Iterable, Sequence

from . import verdicts as _verdicts
from .verdicts import NOT_ESTABLISHED, interval

__all__ = ["SCORES", "SCORE_LABELS", "BASELINES", "DEGRADATION_DROP", "EARLY_FRACTION", "NEGLIGIBLE", "stats", "fmt_stats",
           "summarise_config", "summarise_regularization", "drops_at_peak", "verdicts", "refresh", "findings", "tau_table", "report_markdown", "console_table",
           "plot_demo"]

# What the report compares, with how each enters Kendall τ (higher = predicted better).
SCORES = ("dse", "dse_lambda", "separability", "m_dim", "rankme", "dense_rankme", "alpha_req", "lidar",
          "epoch", "neg_train_loss")
SCORE_LABELS = {"dse": "DSE (official)", "dse_lambda": "DSE_λ (paper)", "separability": "M_inter − M_intra",
                "m_dim": "M_dim", "rankme": "RankMe", "dense_rankme": "dense RankMe", "alpha_req": "α-ReQ (α near 1)",
                "lidar": "LiDAR", "epoch": "epoch number", "neg_train_loss": "− training loss"}
# The label-free baselines and the trivial predictors DSE_λ is held against.
BASELINES = ("rankme", "dense_rankme", "alpha_req", "lidar", "epoch", "neg_train_loss")

DEGRADATION_DROP = 0.02   # mIoU the mean curve must lose from its peak to its last checkpoint
EARLY_FRACTION = 0.1      # a peak in this first fraction of training is not degradation (it is a failure)
NEGLIGIBLE = 0.005        # mIoU changes and gains within ± this are reported as no effect
TAU_TIE = 0.01            # mean τ within this of each other: a tie, not a win


def _finite(values: Iterable) -> list[float]:
    return [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]


def stats(values: Sequence) -> dict:
    """``{"mean", "std", "n", "values"}`` of the finite values; ``std`` is the sample standard
    deviation (n − 1), None below 2 values; ``mean`` None when there is none."""
    finite = _finite(values)
    return {"mean": statistics.fmean(finite) if finite else None,
            "std": statistics.stdev(finite) if len(finite) > 1 else None,
            "n": len(finite), "values": [None if v is None or not math.isfinite(v) else v for v in
                                         (float(x) if x is not None else None for x in values)]}


def fmt_stats(s: dict | None, digits: int = 2, signed: bool = True) -> str:
    """``+0.41 ± 0.12`` (the std left out below 2 seeds); ``n/a`` without a value."""
    if not s or s.get("mean") is None:
        return "n/a"
    sign = "+" if signed else ""
    text = f"{s['mean']:{sign}.{digits}f}"
    if s.get("std") is not None:
        text += f" ± {s['std']:.{digits}f}"
    return text


def _agree(values: Sequence) -> str:
    """How many seeds moved by more than :data:`NEGLIGIBLE` either way: ``"2 up, 0 down of 3 seeds"``."""
    finite = _finite(values)
    up = sum(v > NEGLIGIBLE for v in finite)
    down = sum(v < -NEGLIGIBLE for v in finite)
    return f"{up} up, {down} down of {len(finite)} seeds"


def summarise_config(name: str, method: str, dse_weight: float, epochs: int,
                     trajectories: dict[int, dict], rows: dict[int, list[dict]]) -> dict:
    """One configuration over its seeds.

    ``trajectories``: seed → that run's summary (``tau``, ``selection_by_score``, ...);
    ``rows``: seed → its checkpoints in training order (``epoch``, ``miou``).
    Returns the mean mIoU curve (over the epochs every seed saved), its peak and last value, the
    drop and whether it counts as degradation, per-seed peaks and lasts, and per score the
    statistics of τ and of the selection's gain over the last checkpoint.
    """
    seeds = sorted(trajectories)
    common = sorted(set.intersection(*(set(r["epoch"] for r in rows[s]) for s in seeds)))
    by_seed = {s: {r["epoch"]: r["miou"] for r in rows[s]} for s in seeds}
    mean_curve = [statistics.fmean(by_seed[s][e] for s in seeds) for e in common]
    std_curve = [statistics.stdev([by_seed[s][e] for s in seeds]) if len(seeds) > 1 else 0.0 for e in common]
    peak = max(range(len(common)), key=lambda i: (mean_curve[i], -i))
    drop = mean_curve[peak] - mean_curve[-1]
    early = common[peak] <= EARLY_FRACTION * epochs
    per_seed_peak = [max(by_seed[s].values()) for s in seeds]
    per_seed_last = [rows[s][-1]["miou"] for s in seeds]
    at_peak = drops_at_peak(rows, common[peak])
    verdict = _verdicts.degradation(drop, at_peak, early, DEGRADATION_DROP)
    tau = {score: stats([trajectories[s]["tau"].get(score) for s in seeds]) for score in SCORES}
    gain = {score: stats([trajectories[s]["selection_by_score"].get(score, {}).get("gain_vs_last") for s in seeds])
            for score in SCORES}
    return {
        "method": method, "dse_weight": dse_weight, "seeds": seeds,
        "curve": {"epochs": common, "mean": mean_curve, "std": std_curve},
        "init_miou": mean_curve[0], "peak_epoch": common[peak], "peak_miou": mean_curve[peak],
        "last_epoch": common[-1], "last_miou": mean_curve[-1], "drop": drop, "peak_is_early": early,
        "degradation": verdict, "degraded": verdict == "degrades",
        "seed_peak": stats(per_seed_peak), "seed_last": stats(per_seed_last),
        "seed_drop": stats([p - l for p, l in zip(per_seed_peak, per_seed_last)]), "seed_drop_at_peak": at_peak,
        "seed_peak_epoch": [max(rows[s], key=lambda r: r["miou"])["epoch"] for s in seeds],
        "tau": tau, "gain_vs_last": gain,
        "selected_epoch": [trajectories[s]["selected_epoch"] for s in seeds],
        "lambda": stats([trajectories[s]["lambda"] for s in seeds]),
    }


def drops_at_peak(rows: dict[int, list[dict]], peak_epoch: int) -> dict:
    """Stats of each seed's mIoU at ``peak_epoch`` (the mean curve's peak) minus its last
    checkpoint's: their mean is the mean curve's drop, their spread that drop's uncertainty."""
    return stats([next(r["miou"] for r in rows[s] if r["epoch"] == peak_epoch) - rows[s][-1]["miou"]
                  for s in sorted(rows)])


def summarise_regularization(configs: dict[str, dict], rows: dict[str, dict[int, list[dict]]]) -> list[dict]:
    """Each regularized configuration against the plain one of its method, paired by seed: the
    change of the last checkpoint's mIoU and of the run's peak mIoU (regularized − plain)."""
    out = []
    for name, c in configs.items():
        if not c["dse_weight"]:
            continue
        plain = next((n for n, p in configs.items() if p["method"] == c["method"] and not p["dse_weight"]), None)
        if plain is None:
            continue
        seeds = [s for s in c["seeds"] if s in rows[plain]]
        last = [rows[name][s][-1]["miou"] - rows[plain][s][-1]["miou"] for s in seeds]
        peak = [max(r["miou"] for r in rows[name][s]) - max(r["miou"] for r in rows[plain][s]) for s in seeds]
        out.append({"plain": plain, "regularized": name, "beta": c["dse_weight"], "seeds": seeds,
                    "last_change": stats(last), "peak_change": stats(peak),
                    "last_miou": [configs[plain]["last_miou"], c["last_miou"]],
                    "peak_miou": [configs[plain]["peak_miou"], c["peak_miou"]]})
    return out


def _tau_differences(c: dict, baseline: str) -> dict:
    """Stats of τ(DSE_λ) − τ(baseline), paired by seed (seeds where either is undefined left out)."""
    return stats([a - b for a, b in zip(c["tau"]["dse_lambda"]["values"], c["tau"][baseline]["values"])
                  if a is not None and b is not None])


def _key_tau(name: str, baseline: str) -> str:
    return f"τ on {name}: DSE_λ vs {SCORE_LABELS[baseline]}"


def _key_regularizer(r: dict) -> str:
    return f"regularizer β={r['beta']:g} on {r['plain']}"


def verdicts(summary: dict) -> dict[str, str]:
    """Every conclusion of the report as one verdict (:mod:`dse_ext.demo.verdicts`), keyed by what
    it is about: degradation of each configuration; on each plain configuration, DSE_λ against
    each baseline and the gain of its selection; each regularized configuration against its plain
    one. Two runs' verdicts compare with :func:`dse_ext.demo.verdicts.contradictions`."""
    configs = summary["configs"]
    out = {f"degradation of {n}": c["degradation"] for n, c in configs.items()}
    for name, c in configs.items():
        if c["dse_weight"] or c["tau"]["dse_lambda"]["mean"] is None:
            continue
        for b in BASELINES:
            v = _verdicts.effect(_tau_differences(c, b), TAU_TIE, ("beats", "loses to", "ties with"))
            if v is not None:
                out[_key_tau(name, b)] = v
        v = _verdicts.effect(c["gain_vs_last"]["dse_lambda"], NEGLIGIBLE, ("gains", "loses", "no effect"))
        if v is not None:
            out[f"selection by DSE_λ on {name}"] = v
    for r in summary.get("regularization", []):
        v = _verdicts.effect(r["last_change"], NEGLIGIBLE, ("helps", "hurts", "no effect"))
        if v is not None:
            out[_key_regularizer(r)] = v
    return out


def refresh(summary: dict, rows: list[dict]) -> dict:
    """Recomputes, in place, what the report derives from a finished run's rows (``results.csv``) and
    summary: each configuration's per-seed drops at its peak and its degradation verdict, the
    verdicts and the findings. For a summary written by an older version of the report."""
    for name, c in summary["configs"].items():
        by_seed = {s: sorted((r for r in rows if r["run"] == name and r["seed"] == s), key=lambda r: r["epoch"])
                   for s in c["seeds"]}
        c["seed_drop_at_peak"] = drops_at_peak(by_seed, c["peak_epoch"])
        c["degradation"] = _verdicts.degradation(c["drop"], c["seed_drop_at_peak"], c["peak_is_early"],
                                                 DEGRADATION_DROP)
        c["degraded"] = c["degradation"] == "degrades"
    summary["definitions"] = definitions()
    summary["verdicts"] = verdicts(summary)
    summary["findings"] = findings(summary)
    return summary


def definitions() -> dict:
    """The thresholds and the confidence level behind the verdicts (``summary.json``)."""
    return {"degradation_drop": DEGRADATION_DROP, "early_fraction": EARLY_FRACTION, "negligible": NEGLIGIBLE,
            "tau_tie": TAU_TIE, "confidence": _verdicts.CONFIDENCE}


def _ci(s: dict, digits: int = 3) -> str:
    """``95 % interval [+0.010, +0.048]``; with one seed, that there is none."""
    ci = interval(s)
    if ci is None:
        return "one seed, no interval"
    return f"{_verdicts.CONFIDENCE:.0%} interval [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


_DEGRADATION_WORDS = {
    "degrades": "degrades",
    "does not degrade": f"does not degrade (the interval of its drop lies below {DEGRADATION_DROP})",
    "early peak": "does not degrade: its peak is in the first 10 % of training (a failure to learn, not degradation)",
    NOT_ESTABLISHED: (f"degradation **not established** (it needs a mean drop of at least {DEGRADATION_DROP} with the "
                      f"interval above zero, or the interval below {DEGRADATION_DROP} to rule it out)"),
}
_EFFECT_WORDS = {"gains": "gains", "loses": "loses", "no effect": "has no effect",
                 "helps": "helps", "hurts": "hurts", NOT_ESTABLISHED: "is **not established** either way"}


def findings(summary: dict) -> list[str]:
    """What held, what did not and what the seeds leave open, in plain words with the numbers and
    their intervals; the unflattering ones included."""
    out = []
    configs, regs = summary["configs"], summary.get("regularization", [])
    verdict = summary.get("verdicts") or verdicts(summary)
    plain = {n: c for n, c in configs.items() if not c["dse_weight"]}
    single = any(len(c["seeds"]) < 2 for c in configs.values())
    if single:
        out.append("**One seed per configuration**: no verdict below has an interval, so each may go the other way "
                   "on another machine; `dse demo --full` runs five seeds.")
    for name, c in configs.items():
        n = len(c["seeds"])
        at_peak = c.get("seed_drop_at_peak") or c["seed_drop"]
        words = _DEGRADATION_WORDS[c["degradation"]]
        if c["degradation"] == "degrades" and not c["dse_weight"]:
            words += " on its own"
        out.append(f"**{name}** {words}: mean mIoU over {n} seed{'s' if n > 1 else ''} peaks at epoch "
                   f"{c['peak_epoch']} ({c['peak_miou']:.3f}) and ends at {c['last_miou']:.3f}, a drop of "
                   f"{c['drop']:+.3f} ({_ci(at_peak)}; each seed's own peak to last: "
                   f"{fmt_stats(c['seed_drop'], 3)}).")
    degrading = [n for n, c in plain.items() if c["degradation"] == "degrades"]
    if not degrading:
        out.append("**Dense degradation is not shown** by any plain run here, so τ on these runs mostly measures "
                   "whether a score grows with training.")
    for name in degrading or list(plain):
        c = configs[name]
        t = c["tau"]
        if t["dse_lambda"]["mean"] is None:
            continue
        groups: dict[str, list[str]] = {}
        for b in BASELINES:
            v = verdict.get(_key_tau(name, b))
            if v is None:
                continue
            d = _tau_differences(c, b)
            groups.setdefault(v, []).append(f"{SCORE_LABELS[b]} (τ {fmt_stats(t[b])}; difference "
                                            f"{fmt_stats(d)}, {_ci(d, 2)})")
        parts = [f"{'is not distinguishable from' if v == NOT_ESTABLISHED else v} {'; '.join(items)}"
                 for v, items in groups.items()]
        out.append(f"On {name}, DSE_λ (τ {fmt_stats(t['dse_lambda'])}; official DSE {fmt_stats(t['dse'])}) "
                   + ", and ".join(parts) + ".")
        g = c["gain_vs_last"]["dse_lambda"]
        v = verdict.get(f"selection by DSE_λ on {name}")
        if v is not None:
            out.append(f"Selection by DSE_λ's top local maximum on {name} {_EFFECT_WORDS[v]}: {fmt_stats(g, 3)} mIoU "
                       f"over the last checkpoint ({_ci(g)}; {_agree(g['values'])}); selected epochs "
                       f"{c['selected_epoch']}.")
    for r in regs:
        v = verdict.get(_key_regularizer(r))
        if v is None:
            continue
        ch, pk = r["last_change"], r["peak_change"]
        out.append(f"The regularizer at β = {r['beta']:g} on {r['plain']} {_EFFECT_WORDS[v]}: last-checkpoint mIoU "
                   f"{fmt_stats(ch, 3)} against the plain run, paired by seed ({_ci(ch)}; {_agree(ch['values'])}); "
                   f"peak mIoU {fmt_stats(pk, 3)}.")
    return out


def _stage_line(summary: dict) -> str:
    stages = summary.get("stages", {})
    return ", ".join(f"{k} {v:.0f} s" for k, v in stages.items())


def tau_table(summary: dict) -> str:
    """The headline table (markdown): Kendall τ of each score with mIoU, mean ± std over seeds,
    one column per configuration. The README shows the committed run's."""
    names = list(summary["configs"])
    lines = ["| Kendall τ with val mIoU | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for score in SCORES:
        lines.append(f"| {SCORE_LABELS[score]} | " + " | ".join(fmt_stats(summary["configs"][n]["tau"][score])
                                                            for n in names) + " |")
    return "\n".join(lines)


def _classes_line(cfg: dict) -> str:
    """The scenes' object classes in words, from the configuration (older summaries lack the keys)."""
    k = cfg.get("num_classes", 5)
    if cfg.get("colour_pairs"):
        return (f"{k} object classes in {k // 2} pairs that share a shape and texture and differ only in colour, "
                f"class_colour {cfg.get('class_colour', 0):g}")
    tint = f", class_colour {cfg['class_colour']:g}" if cfg.get("class_colour") else ""
    return f"{k} object classes told apart by shape and texture{tint}"


def report_markdown(summary: dict) -> str:
    """``report.md``: setup, what held, then the tables behind it."""
    cfg, configs = summary["config"], summary["configs"]
    names = list(configs)
    vit = cfg["vit"]
    seeds = cfg["seeds"]
    md = ["# dse_ext demo report", "",
          f"Mode **{summary['mode']}**: {cfg['num_train']} train / {cfg['num_val']} val synthetic scenes "
          f"({vit['img_size']} px, {(vit['img_size'] // vit['patch_size']) ** 2} patch tokens; "
          f"{_classes_line(cfg)}), a ViT (dim {vit['embed_dim']}, depth {vit['depth']}) pre-trained "
          f"{cfg['epochs']} epochs per run on the first {cfg.get('pretrain_images') or cfg['num_train']} train "
          f"scenes at a "
          f"{cfg['schedule']} learning rate {cfg['lr']:g}, seeds {', '.join(map(str, seeds))} per configuration; "
          f"{summary['seconds']:.0f} s on {summary['machine']}, {summary.get('workers', 1)} run(s) side by side "
          f"(summed over runs: {_stage_line(summary)}).", ""]
    if summary.get("reduced"):
        md += [f"This mode is reduced against `dse demo --full`: {summary['reduced']}", ""]
    md += ["Ground truth: val mIoU of a linear probe on frozen patch tokens, trained on the masks of "
           f"{cfg['probe_train']} train images; the val masks are used only to measure. Label-free scores use the "
           f"{cfg['num_val']} val images (no masks), computed by `dse score --scores "
           "dse,rankme,dense_rankme,alpha_req,lidar`; τ and selections by `dse compare` "
           "(`dse compare scores.csv --truth truth.csv --extra neg_train_loss` in this folder reproduces every "
           "per-seed number; `per_seed.csv` lists them). Numbers are mean ± sample standard deviation over seeds.",
           "", f"Definitions (the thresholds fixed before the first run; the condition on the seeds' spread added "
               f"before the five-seed full run was looked at): a configuration **degrades** when its mean mIoU curve "
               f"ends at least {DEGRADATION_DROP} below its peak, the peak is after the first {EARLY_FRACTION:.0%} of "
               f"training and the {_verdicts.CONFIDENCE:.0%} interval of the seeds' drops (Student's t over seeds) lies "
               f"above zero, and **does not degrade** when that interval lies below {DEGRADATION_DROP}; DSE_λ **beats** "
               f"a score when their τ differ by more than {TAU_TIE} on average, paired by seed, with the interval "
               f"above zero (**loses to** in the mirror case); a selection **gains** (the regularizer **helps**) when "
               f"the mean mIoU change is above {NEGLIGIBLE} with its interval above zero (**loses**, **hurts** in the "
               f"mirror case; **no effect** when the whole interval lies within ±{NEGLIGIBLE}). Anything else is "
               f"**not established**: the seeds do not decide it, and another machine may see it either way; two runs "
               f"contradict each other only where both give a definite verdict and they differ "
               f"(`python -m dse_ext.demo.verdicts A/summary.json B/summary.json`).",
           "", "![demo](demo.png)", "", "## What held, what did not, what is not established", ""]
    md += [f"- {line}" for line in findings(summary)]
    md += ["", "## Dense degradation (mean mIoU curve over seeds)", "",
           f"| configuration | seeds | init | peak (epoch) | last | drop | {_verdicts.CONFIDENCE:.0%} interval | "
           "each seed's peak to last | verdict |",
           "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        c = configs[n]
        ci = interval(c["seed_drop_at_peak"])
        md.append(f"| {n} | {len(c['seeds'])} | {c['init_miou']:.3f} | {c['peak_miou']:.3f} ({c['peak_epoch']}) | "
                  f"{c['last_miou']:.3f} | {c['drop']:+.3f} | "
                  f"{'n/a' if ci is None else f'[{ci[0]:+.3f}, {ci[1]:+.3f}]'} | {fmt_stats(c['seed_drop'], 3)} | "
                  f"{c['degradation']} |")
    md += ["", "## Kendall τ of each score with mIoU", "", tau_table(summary)]
    md += ["", "## Selection: mIoU gain of each score's top local maximum over the last checkpoint", "",
           "| score | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for score in SCORES:
        if score == "epoch":
            continue  # always selects the last checkpoint
        md.append(f"| {SCORE_LABELS[score]} | " + " | ".join(fmt_stats(configs[n]["gain_vs_last"][score], 3)
                                                             for n in names) + " |")
    regs = summary.get("regularization", [])
    if regs:
        md += ["", "## The DSE regularizer (loss − β·DSE), paired by seed against the plain run", "",
               f"| configuration | β | last mIoU (plain → regularized) | Δ last | Δ peak | seeds (by more than {NEGLIGIBLE}) |",
               "|---|---|---|---|---|---|"]
        for r in regs:
            md.append(f"| {r['regularized']} | {r['beta']:g} | {r['last_miou'][0]:.3f} → {r['last_miou'][1]:.3f} | "
                      f"{fmt_stats(r['last_change'], 3)} | {fmt_stats(r['peak_change'], 3)} | "
                      f"{_agree(r['last_change']['values'])} |")
    md += ["", "## Verdicts", "", "| conclusion | verdict |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in (summary.get("verdicts") or verdicts(summary)).items()]
    return "\n".join(md) + "\n"


def console_table(summary: dict) -> str:
    """A short text summary for the terminal."""
    configs = summary["configs"]
    names = list(configs)
    width = max(14, *(len(n) + 2 for n in names))
    lines = ["", "Kendall τ with val mIoU, mean ± std over seeds",
             f"{'score':<20}" + "".join(f"{n:>{width}}" for n in names)]
    for score in SCORES:
        lines.append(f"{SCORE_LABELS[score]:<20}" + "".join(f"{fmt_stats(configs[n]['tau'][score]):>{width}}"
                                                           for n in names))
    lines += ["", "mean mIoU: init → peak (epoch) → last; DSE_λ selection gain over the last"]
    for n in names:
        c = configs[n]
        lines.append(f"{n:<{width}} {c['init_miou']:.3f} → {c['peak_miou']:.3f} (ep {c['peak_epoch']}) → "
                     f"{c['last_miou']:.3f} ({c['degradation']}); gain "
                     f"{fmt_stats(c['gain_vs_last']['dse_lambda'], 3)}")
    lines += ["", "What held, what did not, what is not established:"] + [f"- {line.replace('**', '')}" for line in findings(summary)]
    return "\n".join(lines)


def plot_demo(path: str | Path, rows: list[dict], summary: dict) -> None:
    """``demo.png``: per configuration, each seed's mIoU (thin) and the mean (thick) with DSE_λ
    standardised per seed on a second axis and each seed's DSE_λ selection starred; a last panel
    sets the mean mIoU curves of the plain and the regularized runs side by side."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    configs = summary["configs"]
    names = list(configs)
    regs = summary.get("regularization", [])
    panels = len(names) + (1 if regs else 0)
    cols = min(3, panels)
    rows_ = math.ceil(panels / cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows_), layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(rows_, cols, squeeze=False).flat)
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes = axes[:panels]
    for ax, name in zip(axes, names):
        c = configs[name]
        twin = ax.twinx()
        for seed in c["seeds"]:
            run = [r for r in rows if r["run"] == name and r["seed"] == seed]
            epochs = [r["epoch"] for r in run]
            ax.plot(epochs, [r["miou"] for r in run], "-", color="tab:green", alpha=0.35, lw=1)
            lam = [r["dse_lambda"] for r in run]
            mu, sd = statistics.fmean(lam), statistics.pstdev(lam) or 1.0
            twin.plot(epochs, [(v - mu) / sd for v in lam], "-", color="tab:purple", alpha=0.35, lw=1)
            chosen = summary["trajectories"][f"{name}/seed{seed}"]["selected_epoch"]
            hit = next(r for r in run if r["epoch"] == chosen)
            ax.plot([chosen], [hit["miou"]], "*", color="tab:red", ms=10)
        ax.plot(c["curve"]["epochs"], c["curve"]["mean"], "o-", color="tab:green", lw=2, ms=3, label="val mIoU")
        ax.plot([], [], "-", color="tab:purple", label="DSE_λ (z-score, per seed)")
        ax.plot([], [], "*", color="tab:red", ms=10, label="DSE_λ selection")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mIoU", color="tab:green")
        twin.set_yticks([])
        ax.set_title(f"{name}: τ(DSE_λ) {fmt_stats(c['tau']['dse_lambda'])}", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
    if regs:
        ax = axes[-1]
        shown = list(dict.fromkeys([r["plain"] for r in regs] + [r["regularized"] for r in regs]))
        for name in shown:
            c = configs[name]
            ax.plot(c["curve"]["epochs"], c["curve"]["mean"], "-", lw=1.5, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("mean val mIoU")
        ax.set_title("regularizer vs plain (mean over seeds)", fontsize=9)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
