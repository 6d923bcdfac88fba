"""Every CUDA kernel once, each result compared with the CPU kernel: the script run under compute-sanitizer.

    python bench/cuda_smoke.py                   # on the GPU (needs a CUDA build of dse_ext)
    python bench/cuda_smoke.py --device cpu      # the same calls on the CPU: a check of the script itself
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python bench/cuda_smoke.py

Calls the forward and the backward op of every operator (with and without the kept eigenbasis,
with and without an index / a validity mask, cluster_css with its sizes given), k-means with
both seedings and with coincident points, every CUDA eigensolver ("auto", "jacobi", "batched",
"torch", pinned in turn through ``dse_ext._C._set_cuda_eigen_solver``) on matrices of n <= 32
and n > 32, a batch of more than 65535 matrices (the solvers work in chunks of at most 65535),
and dse_ext.dse and the regularizer forward + backward. Sizes are small: under memcheck every
kernel runs far slower. Prints one line per call (``ok`` or ``FAIL``) and exits with status 1 when any call failed.
Uses its own generators; torch's global RNG is never touched.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import torch

import dse_ext
from dse_ext import _C

SOLVERS = ("auto", "jacobi", "batched", "torch")
results: list[tuple[str, bool, str]] = []


def close(a, b, rtol, atol):
    """(ok, detail) for tensors or tuples of tensors, the first on any device."""
    if isinstance(a, (tuple, list)):
        pairs = [close(x, y, rtol, atol) for x, y in zip(a, b)]
        return all(ok for ok, _ in pairs), "; ".join(d for ok, d in pairs if not ok)
    a = a.detach().cpu()
    b = b.detach().cpu()
    if a.shape != b.shape:
        return False, f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    if a.numel() == 0:
        return True, ""
    if not a.is_floating_point():
        same = torch.equal(a, b)
        return same, "" if same else f"{int((a != b).sum())} of {a.numel()} entries differ"
    ok = torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)
    return ok, "" if ok else f"max abs diff {float((a.double() - b.double()).abs().max()):.3g}"


def check(name, run, device, rtol=1e-8, atol=1e-10, compare=True):
    """Runs run(device) and, when compare, run(cpu), and compares them."""
    t = time.perf_counter()
    try:
        got = run(device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        ok, detail = close(got, run(torch.device("cpu")), rtol, atol) if compare else (True, "")
    except Exception as exc:  # noqa: BLE001 - every failure is listed, the run goes on
        ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        traceback.print_exc(file=sys.stderr)
    results.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name} ({(time.perf_counter() - t) * 1e3:.0f} ms){'  ' + detail if detail else ''}",
          flush=True)


def tol(dtype):
    return dict(rtol=1e-8, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-5)


def clustered(gen, P, M, d, k, dtype):
    centres = torch.randn(P, k, d, generator=gen, dtype=dtype) * 3
    labels = torch.arange(M).remainder(k).repeat(P, 1)
    x = torch.gather(centres, 1, labels[..., None].expand(P, M, d))
    return x + 0.05 * torch.randn(P, M, d, generator=gen, dtype=dtype)


def kmeans_checks(device, gen):
    op = torch.ops.dse
    for dtype in (torch.float32, torch.float64):
        x = clustered(gen, 3, 60, 8, 4, dtype)
        counts = torch.tensor([60, 45, 30])
        for init in (0, 1):
            check(f"kmeans {str(dtype)[6:]} init={init}",
                  lambda dev: op.kmeans(x.to(dev), counts.to(dev), 4, 20, 1e-6, 7, init), device, **tol(dtype))
        check(f"kmeans {str(dtype)[6:]} seeding only (max_iters=0)",
              lambda dev: op.kmeans(x.to(dev), counts.to(dev), 4, 0, 1e-6, 7, 0), device, **tol(dtype))
    # Fewer distinct points than clusters: coincident centroids are merged.
    few = torch.randn(2, 3, 5, generator=gen).repeat(1, 6, 1)
    check("kmeans coincident points (3 distinct, k=5)",
          lambda dev: op.kmeans(few.to(dev), torch.tensor([18, 12]).to(dev), 5, 10, 1e-6, 3, 0), device)


def css_checks(device, gen, label=""):
    op = torch.ops.dse
    cases = [(3, 40, 16, 3, torch.float32), (3, 40, 16, 3, torch.float64),  # Gram n <= 16: Jacobi
             (2, 120, 8, 2, torch.float64),                                  # tall clusters, n = d = 8
             (1, 300, 60, 2, torch.float64)]                                 # n ~ 60 > 32: general solver
    for P, M, d, k, dtype in cases:
        x = torch.randn(P, M, d, generator=gen, dtype=dtype)
        labels = torch.randint(-1, k, (P, M), generator=gen)
        grad = torch.randn(P, k, generator=gen, dtype=dtype)
        name = f"cluster_css{label} {str(dtype)[6:]} ({P},{M},{d}) k={k}"
        for keep in (False, True):
            check(f"{name} keep_basis={keep}", lambda dev: op.cluster_css(x.to(dev), labels.to(dev), k, keep), device,
                  **tol(dtype))

        def backward(dev, with_basis):
            out = op.cluster_css(x.to(dev), labels.to(dev), k, with_basis)
            basis = (out[2], out[3]) if with_basis else (None, None)
            return op.cluster_css_backward(grad.to(dev), x.to(dev), labels.to(dev), k, *basis)

        for with_basis in (False, True):
            check(f"{name} backward basis={with_basis}", lambda dev: backward(dev, with_basis), device, **tol(dtype))

        def with_sizes(dev):  # the member counts given on the CPU: batches planned without a host read
            sizes = torch.stack([torch.bincount(row[row >= 0], minlength=k) for row in labels])
            out = op.cluster_css(x.to(dev), labels.to(dev), k, True, sizes)
            grad_x = op.cluster_css_backward(grad.to(dev), x.to(dev), labels.to(dev), k, out[2], out[3], sizes)
            return out[0], out[1], grad_x

        check(f"{name} sizes given, fwd+bwd", with_sizes, device, **tol(dtype))


def erank_checks(device, gen, label=""):
    op = torch.ops.dse
    for shape, dtype in [((5, 8, 32), torch.float32), ((5, 8, 32), torch.float64), ((3, 40, 6), torch.float64),
                         ((2, 70, 50), torch.float64)]:
        x = torch.randn(*shape, generator=gen, dtype=dtype)
        grad = torch.randn(shape[0], generator=gen, dtype=dtype)
        name = f"effective_rank{label} {str(dtype)[6:]} {shape}"
        for keep in (False, True):
            check(f"{name} keep_basis={keep}", lambda dev: op.effective_rank(x.to(dev), None, keep), device, **tol(dtype))

        def backward(dev, with_basis):
            out = op.effective_rank(x.to(dev), None, with_basis)
            basis = (out[1], out[2]) if with_basis else (None, None)
            return op.effective_rank_backward(grad.to(dev), x.to(dev), None, *basis)

        for with_basis in (False, True):
            check(f"{name} backward basis={with_basis}", lambda dev: backward(dev, with_basis), device, **tol(dtype))

        table = x.reshape(-1, shape[-1])
        index = torch.randint(0, table.shape[0], (4, 7), generator=gen)
        g4 = torch.randn(4, generator=gen, dtype=dtype)
        check(f"{name} index", lambda dev: op.effective_rank(table.to(dev), index.to(dev)), device, **tol(dtype))
        check(f"{name} index backward",
              lambda dev: op.effective_rank_backward(g4.to(dev), table.to(dev), index.to(dev)), device, **tol(dtype))


def nearest_checks(device, gen):
    op = torch.ops.dse
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(3, 50, 16, generator=gen, dtype=dtype)
        c = torch.randn(3, 5, 16, generator=gen, dtype=dtype)
        labels = torch.randint(-1, 5, (3, 50), generator=gen)
        valid = torch.rand(3, 5, generator=gen) > 0.3
        grad = torch.randn(3, 50, generator=gen, dtype=dtype)
        for v in (None, valid):
            name = f"nearest_other_centroid_distance {str(dtype)[6:]} valid={'mask' if v is not None else None}"
            to = (lambda t, dev: None if t is None else t.to(dev))
            check(name, lambda dev: op.nearest_other_centroid_distance(x.to(dev), c.to(dev), labels.to(dev), to(v, dev)),
                  device, **tol(dtype))
            check(f"{name} backward",
                  lambda dev: op.nearest_other_centroid_distance_backward(grad.to(dev), x.to(dev), c.to(dev),
                                                                          labels.to(dev), to(v, dev)),
                  device, **tol(dtype))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    info = dse_ext.build_info()
    print(f"# cuda_smoke on {args.device}: torch {torch.__version__}, dse_ext from {dse_ext.__file__}, build {info}")
    if device.type == "cuda" and not (torch.cuda.is_available() and dse_ext.cuda_built()):
        print("cuda_smoke: needs a GPU and a CUDA build of dse_ext (or pass --device cpu)", file=sys.stderr)
        return 2
    gen = torch.Generator().manual_seed(0)
    kmeans_checks(device, gen)
    css_checks(device, gen)
    erank_checks(device, gen)
    nearest_checks(device, gen)

    # Every eigensolver, pinned in turn (a pinned solver that cannot take a size falls back).
    pin = getattr(_C, "_set_cuda_eigen_solver", None)
    for solver in SOLVERS if pin is not None else ():
        previous = pin(solver)
        try:
            x12 = torch.randn(6, 12, 20, generator=gen, dtype=torch.float64)   # n = 12
            x50 = torch.randn(2, 70, 50, generator=gen, dtype=torch.float64)   # n = 50
            for x in (x12, x50):
                n = min(x.shape[1:])
                g = torch.randn(x.shape[0], generator=gen, dtype=torch.float64)

                def both(dev, x=x, g=g):
                    out = torch.ops.dse.effective_rank(x.to(dev), None, True)
                    return out[0], out[1], torch.ops.dse.effective_rank_backward(g.to(dev), x.to(dev), None, out[1], out[2])

                check(f"solver={solver} effective_rank n={n} fwd+bwd", both, device, rtol=1e-8, atol=1e-9)
            xc = torch.randn(2, 90, 40, generator=gen, dtype=torch.float64)
            lc = torch.randint(0, 2, (2, 90), generator=gen)
            check(f"solver={solver} cluster_css n~40 keep_basis",
                  lambda dev: torch.ops.dse.cluster_css(xc.to(dev), lc.to(dev), 2, True)[:2], device)
        finally:
            pin(previous)
    if pin is None:
        print("# no _set_cuda_eigen_solver in this build (CPU-only): the solver loop is skipped")

    # More than 65535 matrices in one call: the batched solvers work in chunks.
    many = torch.randn(70000, 2, 3, generator=gen, dtype=torch.float64)
    check("effective_rank 70000 matrices (chunks of <= 65535)", lambda dev: torch.ops.dse.effective_rank(many.to(dev))[0],
          device)

    # The whole metric and the regularizer, forward + backward.
    feats = clustered(gen, 8, 48, 16, 3, torch.float32).reshape(8, 48, 16)
    for m_dim in ("per_position", "pooled"):
        check(f"dse_ext.dse (8,48,16) m_dim={m_dim}",
              lambda dev: tuple(dse_ext.dse(feats.to(dev), local_clusters=3, global_clusters=6, group_size=4,
                                            m_dim=m_dim, backend="ext")),
              device, rtol=1e-4, atol=1e-5)

    def regularizer(dev):
        tokens = feats.to(dev).requires_grad_(True)
        loss = dse_ext.DSERegularizer(seed=0)(tokens)
        loss.backward()
        return loss.detach(), tokens.grad

    check("DSERegularizer forward + backward (8,48,16)", regularizer, device, rtol=1e-3, atol=1e-5)

    failed = [(name, detail) for name, ok, detail in results if not ok]
    print(f"# cuda_smoke: {len(results) - len(failed)} of {len(results)} calls ok on {args.device}")
    for name, detail in failed:
        print(f"# FAILED: {name}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
