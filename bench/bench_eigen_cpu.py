"""CPU symmetric eigensolvers at the regularizer's size: which LAPACK driver, which precision.

The regularizer's forward decomposes, with eigenvectors, the d × d Gram matrix of each global
cluster (24 of them, d = 384 for ViT-S) and of the whole batch; the CPU kernels solve one matrix
per thread. This script times one such solve on one thread with torch's LAPACK (MKL on x86, the one the
kernels call) and, when scipy is installed, with scipy's own LAPACK (OpenBLAS): dsyevd, dsyevr and
dsyevx with vectors, values only, float32. It also prints how far the nuclear norm (the css) from
float32 Gram eigenvalues is from the exact one for matrices with singular values σᵢ ∝ i^-p, the
accuracy question a float32 solver would raise.

    OPENBLAS_NUM_THREADS=1 python bench/bench_eigen_cpu.py
    python bench/bench_eigen_cpu.py --rows 522 --dim 384 --repeats 5
"""

from __future__ import annotations

import argparse
import time

import torch
from _timing import median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=522, help="rows of Z (a cluster's tokens − 1)")
    parser.add_argument("--dim", type=int, default=384, help="d, the side of the Gram matrix ZᵀZ")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(args.rows, args.dim, dtype=torch.float64, generator=gen)
    g = z.t() @ z
    rows = [("torch (MKL on x86) dsyevd, float64, with vectors: what the CPU kernels call", lambda: torch.linalg.eigh(g)),
            ("torch (MKL on x86) dsyevd, float64, values only", lambda: torch.linalg.eigvalsh(g)),
            ("torch (MKL on x86) ssyevd, float32, with vectors", lambda: torch.linalg.eigh(g.float()))]
    try:
        import numpy as np
        import scipy.linalg as sl

        gn = g.numpy()
        rows += [(f"scipy's LAPACK {name}, float64, with vectors", lambda drv=drv: sl.eigh(gn, driver=drv))
                 for name, drv in (("dsyevd", "evd"), ("dsyevr", "evr"), ("dsyevx", "evx"))]
        rows.append(("scipy's LAPACK ssyevr, float32, with vectors",
                     lambda: sl.eigh(gn.astype(np.float32), driver="evr")))
    except ImportError:
        print("(scipy not installed: torch rows only)")
    rows.append((f"the Gram ZᵀZ itself ({args.rows} × {args.dim}), float64", lambda: z.t() @ z))
    print(f"# one thread, {args.dim} × {args.dim} Gram of a {args.rows} × {args.dim} Gaussian Z; torch "
          f"{torch.__version__}, {time.strftime('%Y-%m-%d')}\n")
    print("| solver | ms |\n|---|---:|")
    for name, f in rows:
        print(f"| {name} | {median_ms(f, args.repeats):.3g} |", flush=True)

    print("\n| σᵢ ∝ i^-p | css relative error, float64 Gram eigenvalues | float32 |\n|---|---:|---:|")
    m = min(args.rows, args.dim)
    u, _ = torch.linalg.qr(torch.randn(args.rows, m, dtype=torch.float64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(args.dim, m, dtype=torch.float64, generator=gen))
    for p in (0.5, 1.0, 2.0):
        s = torch.arange(1, m + 1, dtype=torch.float64) ** -p
        zz = (u * s) @ v.t()
        exact = s.sum()
        e64 = torch.linalg.eigvalsh(zz.t() @ zz).clamp(min=0).sqrt().sum()
        z32 = zz.float()
        e32 = torch.linalg.eigvalsh(z32.t() @ z32).double().clamp(min=0).sqrt().sum()
        print(f"| p = {p} | {float(abs(e64 - exact) / exact):.1e} | {float(abs(e32 - exact) / exact):.1e} |")


if __name__ == "__main__":
    main()
