"""What scoring several label-free scores costs against scoring DSE alone, per checkpoint.

Scores one checkpoint of timm's ``vit_small_patch16_224`` (random weights: the cost does not
depend on them) on a seeded tensor of images with ``dse_ext.score_checkpoints``, once with
``--scores dse`` and once with ``dse,rankme,dense_rankme,alpha_req`` (and, with ``--lidar``, also
``lidar``), and prints the wall time of each run and its split: the model forward passes, and
each score's own time on the same features. Four scores share one forward per image, so they must
cost well under four times one; the table says by how much. Each run is timed after a warm-up
run; the split is measured separately on features extracted once.

    python bench/bench_scores.py                       # 256 images of 224 px, 2 DSE evaluations
    python bench/bench_scores.py --images 64 --size 112 --dse-batch 32   # a quick check of the script
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

FOUR = ["dse", "rankme", "dense_rankme", "alpha_req"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224, help="image size (px)")
    parser.add_argument("--dse-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lidar", action="store_true", help="also time lidar (its views add forward passes)")
    args = parser.parse_args()

    import timm

    import dse_ext
    from dse_ext.features import FeatureExtractor
    from dse_ext.images import normalize
    from dse_ext.scores import ScoreBatch, get_score

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, args.size, args.size), generator=gen, dtype=torch.uint8)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, img_size=args.size).eval()
    folder = tempfile.TemporaryDirectory()
    path = str(Path(folder.name) / "checkpoint0001.pth")
    torch.save(model.state_dict(), path)
    print(f"# vit_small_patch16_224, {args.images} images of {args.size} px, dse_batch {args.dse_batch}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")

    def run(scores: list[str]) -> float:
        times = []
        for _ in range(args.repeats + 1):  # the first is a warm-up
            start = time.perf_counter()
            dse_ext.score_checkpoints([path], model=model, images=images, num_images=args.images,
                                      dse_batch=args.dse_batch, batch_size=64, scores=scores, progress=False,
                                      lidar_images=min(64, args.images))
            times.append(time.perf_counter() - start)
        return statistics.median(times[1:])

    sets = [["dse"], FOUR] + ([FOUR + ["lidar"]] if args.lidar else [])
    totals = {tuple(s): run(s) for s in sets}

    # The split, on features extracted once.
    extract = FeatureExtractor(model)
    start = time.perf_counter()
    with torch.inference_mode():
        parts = [extract.with_embeddings(normalize(images[i:i + 64])) for i in range(0, args.images, 64)]
    forward = time.perf_counter() - start
    tokens, pooled = torch.cat([t for t, _ in parts]), torch.cat([e for _, e in parts])
    split = {}
    chunks = max(1, round(args.images / args.dse_batch))
    bounds = torch.linspace(0, args.images, chunks + 1).round().long().tolist()
    for name in FOUR:
        score = get_score(name)
        start = time.perf_counter()
        for a, b in zip(bounds[:-1], bounds[1:]):
            score(ScoreBatch(tokens[a:b], pooled[a:b], 0, dse_ext.scoring.dse_options(global_clusters=24)))
        split[name] = time.perf_counter() - start

    one, four = totals[("dse",)], totals[tuple(FOUR)]
    print("| scores | wall time (s) | vs dse alone |")
    print("|---|---:|---:|")
    for scores, seconds in totals.items():
        print(f"| {','.join(scores)} | {seconds:.2f} | {seconds / one:.2f}x |")
    print()
    print("| part | seconds |")
    print("|---|---:|")
    print(f"| model forward, {args.images} images (tokens + embeddings) | {forward:.2f} |")
    for name, seconds in split.items():
        print(f"| {name} | {seconds:.2f} |")
    verdict = "met" if four < 2.0 * one else "NOT met"
    print(f"\nfour scores cost {four / one:.2f}x one (target: well under 4x; here < 2x: {verdict})")
    folder.cleanup()


if __name__ == "__main__":
    main()
