"""Times the CUDA eigensolvers per matrix size, to check the size rule (Jacobi for n <= 32).

    python bench/bench_eigen_cuda.py [--batch 4096]
    python bench/bench_eigen_cuda.py --device cpu --batch 64 --sizes 8 40 --repeats 1   # a check of the script

For each n it times `torch.ops.dse.effective_rank` on (batch, n, 384) inputs (an n x n Gram
eigensolve per problem) with the solver pinned to jacobi, batched and torch, and prints a table
in milliseconds (median of the repeats). Needs a GPU and a CUDA build; with --device cpu it times
the CPU kernel instead (one column).
"""

import argparse
import statistics

import torch

import dse_ext
from _timing import median_ms
from dse_ext import _C


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 24, 32, 48, 64, 128])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    args = parser.parse_args()
    if args.device == "cpu":
        print(f"# effective_rank on ({args.batch}, n, 384) float32, ms; CPU kernel")
        print("| n | cpu |\n|---|---|")
        gen = torch.Generator().manual_seed(0)
        for n in args.sizes:
            x = torch.randn(args.batch, n, 384, generator=gen)
            print(f"| {n} | {median_ms(lambda: torch.ops.dse.effective_rank(x), args.repeats):.2f} |", flush=True)
        return
    if not (torch.cuda.is_available() and dse_ext.cuda_built()):
        raise SystemExit("bench_eigen_cuda: needs a GPU and a CUDA build of dse_ext (or pass --device cpu)")
    solvers = ["jacobi", "batched", "torch"]
    print(f"# effective_rank on ({args.batch}, n, 384) float32, ms; {torch.cuda.get_device_name()}; "
          f"XsyevBatched compiled in: {dse_ext.build_info()['cuda_batched_syev']}")
    print("| n | " + " | ".join(solvers) + " |")
    print("|---|" + "---|" * len(solvers))
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in args.sizes:
        x = torch.randn(args.batch, n, 384, device="cuda", generator=gen)
        cells = []
        for solver in solvers:
            previous = _C._set_cuda_eigen_solver(solver)
            try:
                cells.append(f"{timed(lambda: torch.ops.dse.effective_rank(x), args.repeats):.2f}")
            finally:
                _C._set_cuda_eigen_solver(previous)
        print(f"| {n} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
