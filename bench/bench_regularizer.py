"""Benchmark dse_ext.DSERegularizer: forward + backward, compiled vs reference, vs a ViT-S/16 step.

Prints a markdown table: the regularizer's forward+backward time (median of repeats after a
warm-up) with the compiled and the reference backend, its peak GPU memory on CUDA
(``torch.cuda.max_memory_allocated`` above the input tokens), and the time of one training step
(forward, backward, SGD update) of timm's ``vit_small_patch16_224`` at the same batch size (under
bfloat16 autocast on CUDA, float32 on the CPU; ``--vit-dtype``), so the regularizer's cost can be
read as a fraction of a step. A batch that does not fit on the GPU is halved until it does and
the step time scaled back up (said in the table). Each measurement runs in a fresh process. The
ViT column needs timm (``pip install timm``); without it the column is left empty. Where a target
is set (TARGETS: CUDA at 256×196×384) a line under the row says whether it is met.

    python bench/bench_regularizer.py
    python bench/bench_regularizer.py --sizes 64x196x384 --repeats 5 --no-vit
    python bench/bench_regularizer.py --device cuda --sizes 256x196x384 --no-reference   # the CUDA target
    python bench/bench_regularizer.py --sizes 4x196x384 --repeats 1     # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

DEFAULT_SIZES = ["64x196x384", "256x196x384"]
PAPER_SECONDS = {("cpu", "64x196x384"): 1.5}  # the released regularizer, forward + backward, 2 CPU cores (issue #3)
# (device, size) -> (milliseconds, share of a ViT-S/16 step) forward + backward should stay within (issue #11).
TARGETS = {("cuda", "256x196x384"): (5.0, 0.03)}


def parse_size(s: str) -> tuple[int, int, int]:
    b, n, d = (int(v) for v in s.lower().split("x"))
    return b, n, d


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_regularizer(size: str, backend: str, repeats: int, device: str) -> dict:
    import torch

    import dse_ext

    B, N, d = parse_size(size)
    tokens = torch.randn(B, N, d, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    reg = dse_ext.DSERegularizer(backend=backend)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats + 1):  # the first call warms up
        sync(device)
        t = time.perf_counter()
        reg(tokens).backward()
        sync(device)
        times.append(time.perf_counter() - t)
        tokens.grad = None
    result = {"seconds": statistics.median(times[1:])}
    if device == "cuda":
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return result


def time_vit(size: str, repeats: int, device: str, dtype: str) -> dict:
    import torch

    try:
        import timm
    except ImportError:
        return {"seconds": None}
    B, _, _ = parse_size(size)
    model = timm.create_model("vit_small_patch16_224", num_classes=0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    amp = dtype != "float32"
    batch = B
    while True:
        try:
            images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
            times = []
            for _ in range(repeats + 1):
                sync(device)
                t = time.perf_counter()
                with torch.autocast(torch.device(device).type, dtype=getattr(torch, dtype), enabled=amp):
                    loss = model.forward_features(images).float().pow(2).mean()  # a stand-in SSL loss on the tokens
                loss.backward()
                opt.step()
                opt.zero_grad()
                sync(device)
                times.append(time.perf_counter() - t)
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            opt.zero_grad()
            images = loss = None
            torch.cuda.empty_cache()
            batch //= 2
    # Scaled to the requested batch when a smaller one had to be used.
    return {"seconds": statistics.median(times[1:]) * B / batch, "batch": batch}


def run_json(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, help="BxNxd sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (after one warm-up)")
    parser.add_argument("--no-reference", action="store_true", help="time the compiled backend only")
    parser.add_argument("--no-vit", action="store_true", help="skip the ViT-S/16 training step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--vit-dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="autocast dtype of the ViT step (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, size, repeats, device, dtype = args.worker
        result = (time_vit(size, int(repeats), device, dtype) if kind == "vit"
                  else time_regularizer(size, kind, int(repeats), device))
        print(json.dumps(result))
        return
    vit_dtype = args.vit_dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    vit_repeats = "3" if args.device.startswith("cuda") else "1"   # a CPU step at batch 256 takes long

    import torch

    import dse_ext

    print(f"# dse_ext {dse_ext.__version__} regularizer benchmark on {args.device} — torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d')}; build {dse_ext.build_info()}"
          + (f"; {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""))
    print("DSERegularizer defaults (whole batch as one group, pooled M_dim); forward + backward, median of "
          f"{args.repeats} calls after a warm-up; ViT-S/16 step = forward, backward and SGD update, "
          + (f"{vit_dtype} autocast.\n" if vit_dtype != "float32" else "float32.\n"))
    print("| B×N×d | ext fwd+bwd (ms) | ext peak GPU MB | reference fwd+bwd (ms) | speed-up | ViT-S/16 step (ms) | ext / step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        ext_r = run_json(["--worker", "ext", size, str(args.repeats), args.device, vit_dtype])
        ext = ext_r["seconds"]
        ref = None if args.no_reference else run_json(["--worker", "reference", size, "1", args.device, vit_dtype])["seconds"]
        vit_r = {"seconds": None} if args.no_vit else run_json(["--worker", "vit", size, vit_repeats, args.device, vit_dtype])
        vit = vit_r["seconds"]
        ref_s = f"{ref * 1e3:.0f}" if ref else "–"
        speed = f"{ref / ext:.1f}×" if ref else "–"
        vit_s = f"{vit * 1e3:.0f}" if vit else "–"
        if vit and vit_r["batch"] != parse_size(size)[0]:
            vit_s += f" (batch {vit_r['batch']} ×{parse_size(size)[0] // vit_r['batch']})"
        share = f"{100 * ext / vit:.1f}%" if vit else "–"
        peak = f"{ext_r['peak_mb']:.0f}" if "peak_mb" in ext_r else "–"
        print(f"| {size} | {ext * 1e3:.1f} | {peak} | {ref_s} | {speed} | {vit_s} | {share} |", flush=True)
        target = TARGETS.get((args.device, size))
        if target:
            met = ext * 1e3 <= target[0] and (vit is None or ext / vit < target[1])
            share_s = f", {100 * ext / vit:.1f}% of the step" if vit else ", step not measured"
            print(f"|  ↳ target ≤ {target[0]:.0f} ms and < {100 * target[1]:.0f}% of a ViT-S/16 step: "
                  f"{'met' if met else 'MISSED'} ({ext * 1e3:.1f} ms{share_s}) | | | | | | |", flush=True)
        paper = PAPER_SECONDS.get((args.device, size))
        if paper:
            print(f"|  ↳ vs the paper's released regularizer (≈{paper:.1f} s here) | | | | {paper / ext:.1f}× | | |",
                  flush=True)


if __name__ == "__main__":
    main()
