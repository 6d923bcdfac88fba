"""The ``dse`` command (also ``python -m dse_ext``): score checkpoints, select, plot.

    dse score --model vit_small_patch16_224 --checkpoints 'runs/ckpt_*.pth' --images DIR --out results.csv
    dse score ... --scores dse,rankme,dense_rankme,alpha_req,lidar   # every score from one pass
    dse score --features 'feats/*.pt' --out results.csv
    dse select results.csv [--top 3 --window 2 --json selection.json]
    dse plot results.csv -o dse.png
    dse demo [--full | --quick] [--seeds 0,1,2] [--out DIR]
    dse compare results.csv --truth miou.csv [--json out.json --csv out.csv --plot out.png]
    dse env [--json]              # versions, build and devices, for bug reports

Exit status: 0 on success, 1 when some checkpoints could not be scored (the others are in the
table), 2 for bad arguments or input: one line on stderr (``dse <command>: error: ...``), no
traceback, and no work done before the check (arguments, model name, device, output path, DSE
options against the token count, a table in use or scored with other settings are all checked
before the first checkpoint). A traceback means a bug in dse_ext: please report it, with the
output of ``dse env``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main", "build_parser"]


def _seed_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` → ``(0, 1, 2)``: distinct integers >= 0."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(s < 0 or s >= 2**63 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct integers in [0, 2**63), got {text!r}")
    return seeds


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as '{{\"img_size\": 96}}', got {text!r}")
    return value


_json_object.__name__ = "JSON object"


def _dse_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DSE options (see dse_ext.dse)")
    g.add_argument("--local-clusters", type=_int_at_least(1), default=3, help="k-means clusters per image (default 3)")
    g.add_argument("--global-clusters", type=_int_at_least(2), default=24, help="k-means clusters per group (default 24)")
    g.add_argument("--group-size", type=_int_at_least(1), default=8, help="images per global clustering group (default 8)")
    g.add_argument("--dse-batch", type=_int_at_least(2), default=1024,
                   help="images per DSE evaluation; components are averaged over evaluations (default 1024)")


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dse", description="Dense representation Structure Estimator (DSE): "
                                     "score SSL checkpoints without labels and pick the ones to keep.")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("score", help="score checkpoints (or saved features) into a results CSV",
                       description="Scores every checkpoint on the same seeded image subset; resumes an existing "
                                   "--out table, skips (and reports) checkpoints that cannot be scored. Under "
                                   "torchrun the checkpoints are shared out over the ranks.")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoints", nargs="+", metavar="PATH_OR_GLOB", help="checkpoint files or glob patterns")
    src.add_argument("--features", nargs="+", metavar="PATH_OR_GLOB",
                     help="score .pt files of (B, N, d) features instead of a model")
    s.add_argument("--model", help="timm model name, e.g. vit_small_patch16_224, or hf:PATH, a transformers "
                                   "save_pretrained directory (DINOv2, ViT-MAE, I-JEPA, ...) (with --checkpoints)")
    s.add_argument("--model-kwargs", type=_json_object, default={}, metavar="JSON",
                   help='extra timm.create_model arguments, e.g. \'{"img_size": 96}\'')
    s.add_argument("--images", help="folder of images (searched recursively; with --checkpoints)")
    s.add_argument("--out", required=True, help="results CSV (created, or resumed if it exists; locked while "
                                                "this run writes it)")
    s.add_argument("--rescore", action="store_true",
                   help="score every checkpoint again and replace the table's rows (needed to resume a table "
                        "scored with other settings)")
    s.add_argument("--num-images", type=_int_at_least(2), default=2048, help="images per checkpoint (default 2048)")
    s.add_argument("--image-size", type=_int_at_least(1),
                   help="crop size after resizing (default: the model's input size, e.g. 224)")
    s.add_argument("--batch-size", type=_int_at_least(1), default=64, help="images per forward pass (default 64)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (under torchrun: each rank's GPU)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model precision (autocast); DSE runs in float32")
    s.add_argument("--seed", type=_int_at_least(0), default=0,
                   help="picks the images and seeds DSE, an integer in [0, 2**63) (default 0)")
    s.add_argument("--layer", help="block/stage index (timm) or dotted module name; default: the last")
    s.add_argument("--checkpoint-key", help="sub-dict holding the weights (teacher, state_dict, ...); "
                                            "default: detected")
    s.add_argument("--strip-prefix", help="key prefix to strip (module.backbone., ...); default: detected")
    s.add_argument("--rename-keys", action="append", metavar="REGEX=REPLACEMENT",
                   help="rewrite checkpoint keys after the prefix is stripped (re.sub, repeatable, applied in "
                        "order), e.g. '^4\\.=layer1.' for a ResNet flattened into nn.Sequential")
    s.add_argument("--unsafe-load", action="store_true",
                   help="allow checkpoints that pickle arbitrary Python objects (only files you trust)")
    s.add_argument("--scores", default="dse", metavar="NAMES",
                   help="comma-separated scores to compute from the same features (default dse); built in: dse, "
                        "rankme, dense_rankme, alpha_req, lidar. A table lacking some gets only those")
    s.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import this Python module first (one that registers scores with "
                        "dse_ext.register_score); repeatable")
    s.add_argument("--lidar-images", type=_int_at_least(2), default=None,
                   help="images whose augmented views LiDAR scores (the first of the subset; default 256)")
    s.add_argument("--lidar-views", type=_int_at_least(2), default=None, help="augmented views per image (default 4)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    _dse_options(s)

    sel = sub.add_parser("select", help="λ, DSE_λ and the top local maxima of a results CSV")
    sel.add_argument("results", help="results CSV written by `dse score`")
    sel.add_argument("--top", type=_int_at_least(1), default=3, help="checkpoints to keep (default 3)")
    sel.add_argument("--window", type=_int_at_least(0), default=2, help="local-maximum half window (default 2)")
    sel.add_argument("--lam", type=float, help="use this λ instead of std(M_inter - M_intra) / std(M_dim)")
    sel.add_argument("--by", metavar="SCORE", help="select by this score or column instead of DSE_λ (rankme, "
                                                  "lidar, dse, ...; α-ReQ by -|α - 1|)")
    sel.add_argument("--json", metavar="PATH", help="also write the selection as JSON ('-': stdout only JSON)")

    dm = sub.add_parser("demo", help="the end-to-end demo: synthetic data, SSL runs over seeds, scores vs. mIoU, report",
                        description="Makes a synthetic dense dataset, pre-trains a small ViT with plain DINO and DINO + "
                                    "the DSE regularizer (beta = 1e-3, the paper's) from several seeds, scores every "
                                    "checkpoint (DSE, RankMe, dense RankMe, alpha-ReQ, LiDAR) against a linear probe's "
                                    "val mIoU and writes a report of what held (mean +- std over seeds). Default: one "
                                    "seed each, about 5 minutes on 2 CPU cores; --full: 5 seeds, MoCo v3 and a beta "
                                    "sweep, about 50 minutes; --quick: a smoke run of about a minute.")
    size = dm.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="5 seeds, MoCo v3 and a beta sweep (about 50 minutes on 2 cores)")
    size.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run, numbers meaningless)")
    dm.add_argument("--out", default="demo-out", help="output folder (default demo-out)")
    dm.add_argument("--seeds", type=_seed_list, help="training seeds, comma-separated (default: 0; --full 0,1,2,3,4)")
    dm.add_argument("--workers", type=_int_at_least(1), help="runs side by side, one torch thread each (default: one "
                                                             "per CPU core); 1 runs them here with progress bars")
    dm.add_argument("--no-progress", action="store_true")

    cm = sub.add_parser("compare", help="Kendall τ / Spearman ρ of every score with your downstream metric, and "
                                        "what each score selects (the evaluation protocol)",
                        description="Compares every score of a results table with a downstream metric per "
                                    "checkpoint (TRUTH.csv: a 'checkpoint' or 'epoch' column and the metric): "
                                    "Kendall τ-b and Spearman ρ with bootstrap 95%% intervals, the checkpoint each "
                                    "score selects (top local maximum; DSE by DSE_λ) and its metric against the last "
                                    "and the best checkpoint; per run and averaged over runs.")
    cm.add_argument("results", help="results CSV written by `dse score` (several runs: a run column)")
    cm.add_argument("--truth", required=True, help="CSV of the downstream metric per checkpoint")
    cm.add_argument("--truth-column", default="miou", help="the metric's column (higher = better; default miou)")
    cm.add_argument("--run-column", default="run", help="column naming the run in either table (default run)")
    cm.add_argument("--window", type=_int_at_least(0), default=2, help="local-maximum half window (default 2)")
    cm.add_argument("--bootstrap", type=_int_at_least(0), default=1000, help="bootstrap resamples (default 1000)")
    cm.add_argument("--seed", type=_int_at_least(0), default=0, help="seeds the bootstrap (default 0)")
    cm.add_argument("--extra", metavar="COLUMNS", help="comma-separated numeric columns of either table to compare "
                                                       "as scores too (higher = better), e.g. neg_train_loss")
    cm.add_argument("--json", metavar="PATH", help="also write the comparison as JSON ('-': stdout only JSON)")
    cm.add_argument("--csv", metavar="PATH", help="also write one row per (run, score) as CSV")
    cm.add_argument("--plot", metavar="PATH", help="also draw scores and metric over training (needs matplotlib)")

    en = sub.add_parser("env", help="versions, the compiled operators' build and the devices seen "
                                    "(paste it into bug reports)")
    en.add_argument("--json", action="store_true", help="as JSON")

    pl = sub.add_parser("plot", help="components and DSE_λ over training, selection marked (needs matplotlib)")
    pl.add_argument("results", help="results CSV written by `dse score`")
    pl.add_argument("-o", "--out", default="dse.png", help="image file (default dse.png)")
    pl.add_argument("--top", type=_int_at_least(1), default=3)
    pl.add_argument("--window", type=_int_at_least(0), default=2)
    pl.add_argument("--lam", type=float)
    pl.add_argument("--scores", metavar="NAMES", help="comma-separated other scores of the table to draw in a "
                                                      "third panel (rankme,lidar,...)")
    return parser


def _layer(text: str | None):
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return text


def _score(args: argparse.Namespace) -> int:
    from . import distributed
    from .scoring import _check_device, score_checkpoints, score_features

    dse_kwargs = dict(local_clusters=args.local_clusters, global_clusters=args.global_clusters,
                      group_size=args.group_size)
    import importlib

    from .scores import LIDAR_IMAGES, LIDAR_VIEWS

    for module in args.imports:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"--import {module}: {e}") from None
    if args.features and (args.lidar_images or args.lidar_views):
        raise ValueError("--lidar-images / --lidar-views are for --checkpoints (LiDAR needs a model)")
    if args.features and (args.model or args.images):
        raise ValueError("--features scores saved features: --model and --images are for --checkpoints")
    if args.checkpoints and (not args.model or not args.images):
        raise ValueError("--checkpoints needs --model and --images")
    _check_device(args.device)  # before joining a process group
    started, device = distributed.init_from_env(args.device)
    try:
        if args.features:
            report = score_features(args.features, out=args.out, dse_batch=args.dse_batch, seed=args.seed,
                                    rescore=args.rescore, scores=args.scores, progress=not args.no_progress,
                                    **dse_kwargs)
        else:
            report = score_checkpoints(
                args.checkpoints, model=args.model, images=args.images, out=args.out, num_images=args.num_images,
                batch_size=args.batch_size, dse_batch=args.dse_batch, device=device, dtype=args.dtype,
                seed=args.seed, layer=_layer(args.layer), key=args.checkpoint_key, prefix=args.strip_prefix,
                rename=args.rename_keys,
                image_size=args.image_size, unsafe_load=args.unsafe_load, model_kwargs=args.model_kwargs,
                rescore=args.rescore, scores=args.scores, lidar_images=args.lidar_images or LIDAR_IMAGES,
                lidar_views=args.lidar_views or LIDAR_VIEWS, progress=not args.no_progress, **dse_kwargs)
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    if distributed.rank() == 0:
        changed = f" ({len(report.changed)} of them changed since last scored)" if report.changed else ""
        if report.extended:
            changed += f" ({len(report.extended)} of them given only the scores they lacked)"
        print(f"{len(report.scored)} scored{changed}, {len(report.skipped)} already done, {len(report.failures)} "
              f"failed -> {args.out}", file=sys.stderr)
        for name, reason in report.failures:
            print(f"  failed: {name}: {reason}", file=sys.stderr)
    return 0 if report.ok else 1


def _select(args: argparse.Namespace) -> int:
    from .selection import select_checkpoints

    selection = select_checkpoints(args.results, top=args.top, window=args.window, lam=args.lam, by=args.by)
    if args.json == "-":
        print(json.dumps(selection.to_dict(), indent=2))
        return 0
    print(selection.format_table())
    if args.json:
        Path(args.json).write_text(json.dumps(selection.to_dict(), indent=2) + "\n")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .plotting import plot_results

    scores = [name.strip() for name in args.scores.split(",") if name.strip()] if args.scores else None
    path = plot_results(args.results, args.out, top=args.top, window=args.window, lam=args.lam, scores=scores)
    print(path)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_scores, plot_comparison

    comparison = compare_scores(args.results, args.truth, truth_column=args.truth_column, run_column=args.run_column,
                                window=args.window, bootstrap=args.bootstrap, seed=args.seed,
                                extra_scores=[c.strip() for c in (args.extra or "").split(",") if c.strip()])
    text = json.dumps(comparison.to_dict(), indent=2)
    if args.json == "-":
        print(text)
    else:
        print(comparison.format_table())
        if args.json:
            Path(args.json).write_text(text + "\n")
    if args.csv:
        comparison.write_csv(args.csv)
    if args.plot:
        plot_comparison(comparison, args.plot)
    return 0


def _env(args: argparse.Namespace) -> int:
    from .environment import environment, format_environment

    env = environment()
    print(json.dumps(env, indent=2) if args.json else format_environment(env))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .demo.run import DemoConfig, run_demo

    config = DemoConfig.full() if args.full else DemoConfig.quick() if args.quick else DemoConfig()
    if args.seeds is not None:
        config = replace(config, seeds=args.seeds)
    run_demo(args.out, config, progress=not args.no_progress, workers=args.workers)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .locking import TableInUseError

    args = build_parser().parse_args(argv)
    handler = {"score": _score, "select": _select, "plot": _plot, "demo": _demo, "env": _env,
               "compare": _compare}[args.command]
    try:
        return handler(args)
    except (ValueError, ImportError, OSError, TableInUseError) as e:  # the user's input or machine, not a bug
        text = str(e)
        if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in text:
            text = f"{e.filename}: {text}"
        print(f"dse {args.command}: error: {text}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
