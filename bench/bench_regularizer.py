"""Benchmark dse_ext.DSERegularizer: forward + backward, compiled vs reference, vs lightly's port,
vs its arithmetic floor, vs a ViT-S/16 step.

Prints a markdown table: the regularizer's forward+backward time (median of repeats after a
warm-up) with the compiled and the reference backend, its peak GPU memory on CUDA
(``torch.cuda.max_memory_allocated`` above the input tokens), and the time of one training step
(forward, backward, SGD update) of timm's ``vit_small_patch16_224`` at the same batch size (under
bfloat16 autocast on CUDA, float32 on the CPU; ``--vit-dtype``), so the regularizer's cost can be
read as a fraction of a step. A batch that does not fit on the GPU is halved until it does and
the step time scaled back up (said in the table). Each row runs in a fresh process, and so does
each ViT step. The
ViT column needs timm (``pip install timm``); without it the column is left empty. Where a target
is set (TARGETS: CUDA at 256×196×384; CPU_TARGETS: 64 and 256×196×384) a line under the row says
whether it is met.

On the CPU two more columns: lightly's ``DSERegularizer`` (the paper's regularizer as the lightly
library ports it; weight 1e-3, its own defaults: global clustering in groups of 8 images), timed
side by side with ours when lightly is installed (``pip install lightly --no-deps`` is enough for
that module; it is never a dependency of dse_ext), and the **floor**: the FLOPs the regularizer
cannot avoid (:func:`regularizer_floor_flops`: k-means GEMMs, Grams, eigensolves with vectors,
the backward's products) divided by GEMM rates. Ours, lightly's and the GEMM rates are measured
in the same process, on the same tokens, in alternating rounds (:func:`time_cpu_row`), so that a
drift of the machine's speed moves all three and the ratios do not depend on how fast the
machine is at the moment.

Each size gets one row per ``--group-sizes`` entry: ``8`` is DSERegularizer's default and the
released regularizer's grouping, which lightly's port keeps (24 clusters per 8 images, Grams of
about N/3 × N/3): the same work as lightly's port, so that row's "lightly / ext" compares
implementations; ``all`` clusters the whole batch as one group (24 clusters of B·N/24 tokens,
whose Grams are d × d), more work than lightly's port does.

    python bench/bench_regularizer.py
    python bench/bench_regularizer.py --sizes 64x196x384 --repeats 5 --no-vit
    python bench/bench_regularizer.py --device cuda --sizes 256x196x384 --no-reference   # the CUDA target
    python bench/bench_regularizer.py --sizes 4x196x384 --repeats 1     # a quick check of the script
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time

DEFAULT_SIZES = ["64x196x384", "256x196x384"]
# (device, size) -> (milliseconds, share of a ViT-S/16 step) forward + backward should stay within (issue #11).
TARGETS = {("cuda", "256x196x384"): (5.0, 0.03)}
# (device, size) -> (min speed-up over lightly's port, max multiple of the floor, max share of a
# ViT-S/16 step) on 2 CPU cores (issue #15).
CPU_TARGETS = {("cpu", "64x196x384"): (5.0, 1.5, 0.05), ("cpu", "256x196x384"): (5.0, 1.5, 0.05)}
# The released regularizer and lightly's port cluster globally over groups of
# global_clusters // local_clusters = 24 // 3 = 8 images; so does DSERegularizer by default.
LIGHTLY_GROUP = 8
# lightly's calls timed per row (each takes seconds at these sizes): the median of at most this many.
LIGHTLY_REPEATS = 3


def parse_size(s: str) -> tuple[int, int, int]:
    """``"BxNxd"`` (e.g. ``64x196x384``) as three positive ints."""
    parts = s.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"sizes are BxNxd with three positive ints, e.g. 64x196x384; got {s!r}")
    b, n, d = (int(v) for v in parts)
    return b, n, d


def size_argument(s: str) -> str:
    """``--sizes`` entry, checked here so that a typo fails before any worker starts."""
    parse_size(s)
    return s


def regularizer_floor_flops(B: int, N: int, d: int, iters_local: float, iters_global: float,
                            k_l: int = 3, k_g: int = 24, group_size: int | None = None) -> tuple[float, float]:
    """(float32 FLOPs, float64 FLOPs) that the regularizer's forward + backward cannot avoid
    (pooled M_dim; the global clustering over groups of ``group_size`` images, ``None``: the
    whole batch as one group).

    - k-means (float32, no gradient): per run, k seeding passes, one distance GEMM per update and
      the final assignment (2·n·d·k each) plus the centroid sums (n·d per update); per image with
      k_l over N tokens, and once over all B·N tokens with k_g.
    - Forward (float64): for every cluster of n tokens a Gram of the smaller side m = min(n, d)
      (m²·max(n, d), one triangle) and its eigendecomposition **with vectors**, which the backward
      needs (4/3·m³ to reduce to tridiagonal form and 2·m³ to apply the reflectors to the
      vectors); the same for the pooled effective rank over all B·N tokens.
    - Backward (float64): per cluster, V·f(Λ)·Vᵀ (2·m³) and its product with the cluster's tokens
      (2·n·d·m).
    Eigensolver FLOPs are divided by the GEMM rate, as in bench_dse.py's floor: optimistic, so the
    floor is a floor.
    """
    def kmeans(n_total, k, iters):
        return 2 * n_total * d * k * (2 + iters) + n_total * d * iters

    f32 = kmeans(B * N, k_l, iters_local) + kmeans(B * N, k_g, iters_global)

    def term(n):  # one Gram-based spectral term over n tokens: forward + backward
        m = min(n, d)
        return m * m * max(n, d) + (4 / 3 + 2) * m ** 3 + 2 * m ** 3 + 2 * n * d * m

    G = B if group_size is None else min(group_size, B)
    groups = [G] * (B // G) + ([B % G] if B % G else [])
    f64 = B * k_l * term(N / k_l) + sum(k_g * term(g * N / k_g) for g in groups) + term(B * N)
    return f32, f64


def gemm_probe():
    """A function measuring the CPU FLOP/s of a float32 distance GEMM and of a float64 Gram GEMM
    (as bench_dse.py), as a pair, each time it is called (≈ 0.1–0.2 s)."""
    import torch

    def rate(a, b, reps):
        for _ in range(2):
            torch.bmm(a, b)
        t = time.perf_counter()
        for _ in range(reps):
            torch.bmm(a, b)
        return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2] * reps / (time.perf_counter() - t)

    x32 = torch.randn(8, 1568, 384)
    c32 = torch.randn(8, 384, 24)
    z64 = torch.randn(192, 64, 384, dtype=torch.float64)
    return lambda: (rate(x32, c32, 20), rate(z64, z64.transpose(1, 2), 10))


def kmeans_iterations(size: str, group_size: int | None = None) -> tuple[float, float]:
    """Mean k-means updates of the regularizer's two clusterings (local k=3, global k=24 over groups
    of ``group_size`` images, ``None``: the whole batch) on the benchmark's tokens, as the compiled
    op reports them (the global mean weighted by the groups' tokens)."""
    import torch

    import dse_ext  # noqa: F401  (registers torch.ops.dse)

    B, N, d = parse_size(size)
    x = torch.nn.functional.normalize(torch.randn(B, N, d, generator=torch.Generator().manual_seed(0)), dim=-1)
    it_l = torch.ops.dse.kmeans(x, torch.full((B,), N, dtype=torch.long), 3, 20, 1e-4, 0, 0)[2]
    G = B if group_size is None else min(group_size, B)
    P = -(-B // G)
    xg = torch.cat([x, x.new_zeros(P * G - B, N, d)]).reshape(P, G * N, d)
    counts = torch.tensor([min(G, B - p * G) * N for p in range(P)])
    it_g = torch.ops.dse.kmeans(xg, counts, 24, 20, 1e-4, 0, 0)[2]
    return float(it_l.float().mean()), float((it_g.double() * counts).sum() / counts.sum())


def time_cpu_row(size: str, repeats: int, group: int | None, with_lightly: bool, lightly_repeats: int) -> dict:
    """One CPU row in one process, on the same tokens: DSERegularizer (compiled), forward + backward;
    the GEMM rates of its floor; and lightly's port (``lightly.loss.regularizer.DSERegularizer``)
    when ``with_lightly`` and installed (``pip install lightly --no-deps`` is enough for that
    module). After one warm-up each, every round measures the GEMM rates, then times one call of
    ours and one of lightly's (the first ``lightly_repeats`` rounds only: each takes seconds), so
    that all three see the same machine: on a shared machine its speed drifts by tens of percent
    between processes, which moved "ext / floor" and "lightly / ext" as much when each was
    measured in a process of its own. Medians over the rounds; ``"lightly"`` is None without it."""
    import torch

    import dse_ext

    LightlyDSE = None
    if with_lightly:
        try:
            from lightly.loss.regularizer.dse import DSERegularizer as LightlyDSE
        except ImportError:
            pass
    B, N, d = parse_size(size)
    f32, f64 = regularizer_floor_flops(B, N, d, *kmeans_iterations(size, group), group_size=group)
    probe = gemm_probe()
    tokens = torch.randn(B, N, d, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    ours = dse_ext.DSERegularizer(backend="ext", group_size=group)
    theirs = None if LightlyDSE is None else LightlyDSE(weight=1e-3)

    def call(reg) -> float:
        t = time.perf_counter()
        reg(tokens).backward()
        tokens.grad = None
        return time.perf_counter() - t

    ext_times, lightly_times, rates = [], [], []
    with torch.random.fork_rng(devices=[]):  # lightly's k-means++ draws from the global RNG
        torch.manual_seed(0)
        probe()  # warm-ups
        call(ours)
        if theirs is not None:
            call(theirs)
        for i in range(repeats):
            rates.append(probe())
            ext_times.append(call(ours))
            if theirs is not None and i < lightly_repeats:
                lightly_times.append(call(theirs))
    r32 = statistics.median(r[0] for r in rates)
    r64 = statistics.median(r[1] for r in rates)
    return {"seconds": statistics.median(ext_times),
            "lightly": statistics.median(lightly_times) if lightly_times else None,
            "floor": {"seconds": f32 / r32 + f64 / r64, "gflop32": f32 / 1e9, "gflop64": f64 / 1e9,
                      "rate32": r32 / 1e9, "rate64": r64 / 1e9}}


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def time_regularizer(size: str, backend: str, repeats: int, device: str, group_size: int | None = None) -> dict:
    import torch

    import dse_ext

    B, N, d = parse_size(size)
    tokens = torch.randn(B, N, d, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    reg = dse_ext.DSERegularizer(backend=backend, group_size=group_size)
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


def parse_group(value: str) -> int | None:
    """``--group-sizes`` entry: ``all`` (the whole batch as one group) or a positive int."""
    if value == "all":
        return None
    size = int(value)
    if size < 1:
        raise argparse.ArgumentTypeError(f"group sizes are 'all' or a positive int, got {value!r}")
    return size


def group_label(group: int | None) -> str:
    return "whole batch" if group is None else f"{group} images" + (" (default, lightly's)" if group == LIGHTLY_GROUP
                                                                  else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=size_argument, default=DEFAULT_SIZES, help="BxNxd sizes")
    parser.add_argument("--group-sizes", nargs="+", type=parse_group, default=[LIGHTLY_GROUP, None],
                        help=f"group_size of DSERegularizer, one row each: images per group ({LIGHTLY_GROUP}: the "
                             "default and lightly's grouping, the same work as its port) or 'all' (the whole batch "
                             "as one group)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (after one warm-up)")
    parser.add_argument("--no-reference", action="store_true", help="time the compiled backend only")
    parser.add_argument("--no-vit", action="store_true", help="skip the ViT-S/16 training step")
    parser.add_argument("--no-lightly", action="store_true", help="skip lightly's DSERegularizer (CPU only)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--vit-dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="autocast dtype of the ViT step (default: bfloat16 on CUDA, float32 on the CPU)")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, size, repeats, device, dtype, group_arg = args.worker
        group = parse_group(group_arg)
        if kind == "vit":
            result = time_vit(size, int(repeats), device, dtype)
        elif kind in ("cpu-row", "cpu-row-alone"):
            result = time_cpu_row(size, int(repeats), group, kind == "cpu-row", LIGHTLY_REPEATS)
        else:
            result = time_regularizer(size, kind, int(repeats), device, group)
        print(json.dumps(result))
        return
    groups = args.group_sizes
    vit_dtype = args.vit_dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    vit_repeats = "3" if args.device.startswith("cuda") else "1"   # a CPU step at batch 256 takes long

    import torch

    import dse_ext

    print(f"# dse_ext {dse_ext.__version__} regularizer benchmark on {args.device} — torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {time.strftime('%Y-%m-%d')}; build {dse_ext.build_info()}"
          + (f"; {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""))
    print(f"DSERegularizer (pooled M_dim; the global clustering over the group column's images: '{LIGHTLY_GROUP} "
          "images' is the default and lightly's grouping, the same work as its port, 'whole batch' one group); "
          "forward + "
          f"backward, median of {args.repeats} calls after a warm-up; lightly = its DSERegularizer(weight=1e-3) with "
          f"its own defaults; on the CPU ours, lightly's (median of {min(args.repeats, LIGHTLY_REPEATS)} calls) and "
          "the floor's GEMM rates are measured in the same process on the same tokens, in alternating rounds; "
          "ViT-S/16 step = forward, backward and SGD update, "
          + (f"{vit_dtype} autocast.\n" if vit_dtype != "float32" else "float32.\n"))
    print("| B×N×d | global groups | ext fwd+bwd (ms) | ext peak GPU MB | lightly (ms) | lightly / ext | floor (ms) "
          "| ext / floor | reference (ms) | ViT-S/16 step (ms) | ext / step |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    cpu = args.device == "cpu"
    pad = " | | | | | | | | | |"
    floors = []
    for size in args.sizes:
        vit_r = ({"seconds": None} if args.no_vit
                 else run_json(["--worker", "vit", size, vit_repeats, args.device, vit_dtype, "all"]))
        vit = vit_r["seconds"]
        for group in groups:
            g_arg = "all" if group is None else str(group)
            # On the CPU ours, the floor's GEMM rates and lightly's port in one process, in rounds
            kind = ("cpu-row-alone" if args.no_lightly else "cpu-row") if cpu else "ext"
            ext_r = run_json(["--worker", kind, size, str(args.repeats), args.device, vit_dtype, g_arg])
            ext, lightly = ext_r["seconds"], ext_r.get("lightly")
            floor_r = ext_r.get("floor")
            floor = floor_r["seconds"] if floor_r else None
            if floor_r:
                floors.append((size, group, floor_r))
            ref = (None if args.no_reference
                   else run_json(["--worker", "reference", size, "1", args.device, vit_dtype, g_arg])["seconds"])
            ms = lambda v: f"{v * 1e3:.0f}" if v else "–"  # noqa: E731
            vit_s = ms(vit)
            if vit and vit_r["batch"] != parse_size(size)[0]:
                vit_s += f" (batch {vit_r['batch']} ×{parse_size(size)[0] // vit_r['batch']})"
            peak = f"{ext_r['peak_mb']:.0f}" if "peak_mb" in ext_r else "–"
            print(f"| {size} | {group_label(group)} | {ext * 1e3:.1f} | {peak} | {ms(lightly)} "
                  f"| {f'{lightly / ext:.1f}×' if lightly else '–'} | {f'{floor * 1e3:.3g}' if floor else '–'} "
                  f"| {f'{ext / floor:.1f}×' if floor else '–'} | {ms(ref)} | {vit_s} "
                  f"| {f'{100 * ext / vit:.1f}%' if vit else '–'} |", flush=True)
            target = TARGETS.get((args.device, size)) if group == LIGHTLY_GROUP else None  # set for the default
            if target:
                met = ext * 1e3 <= target[0] and (vit is None or ext / vit < target[1])
                share_s = f", {100 * ext / vit:.1f}% of the step" if vit else ", step not measured"
                print(f"|  ↳ target ≤ {target[0]:.0f} ms and < {100 * target[1]:.0f}% of a ViT-S/16 step: "
                      f"{'met' if met else 'MISSED'} ({ext * 1e3:.1f} ms{share_s}){pad}", flush=True)
            cpu_target = CPU_TARGETS.get((args.device, size))
            if cpu_target:
                speedup, over_floor, share = cpu_target
                like = "same work as lightly" if group == LIGHTLY_GROUP else "more work than lightly's grouping"
                checks = [(f"≥ {speedup:.0f}× lightly ({like})", None if lightly is None else lightly / ext >= speedup),
                          (f"≤ {over_floor:.1f}× the floor", None if floor is None else ext / floor <= over_floor),
                          (f"< {100 * share:.0f}% of a ViT-S/16 step", None if vit is None else ext / vit < share)]
                words = ", ".join(f"{name}: {'not measured' if ok is None else 'met' if ok else 'MISSED'}"
                                  for name, ok in checks)
                print(f"|  ↳ CPU targets: {words}{pad}", flush=True)
    for size, group, f in floors:
        print(f"\nfloor at {size}, global groups of {group_label(group)}: {f['gflop32']:.2f} GFLOP float32 (k-means) "
              f"at {f['rate32']:.1f} GFLOP/s + {f['gflop64']:.2f} GFLOP float64 (Grams, eigensolves with vectors, "
              f"backward products) at {f['rate64']:.1f} GFLOP/s (GEMM rates measured between our calls; "
              "regularizer_floor_flops says what is counted)")


if __name__ == "__main__":
    main()
