"""Pairwise Jensen–Shannon kernel: speed, accuracy and peak memory.

Compares ``cdclip.functional.pairwise_js`` (default backend: the fused C kernel where it can be
built) and its torch-blocks backend with ``scipy.spatial.distance.cdist(P, P, "jensenshannon") ** 2``
(the float64 oracle) and with a naive broadcast that materialises the ``N × N × K`` tensor, and puts
the kernel next to its floor: the time of ``N²K/2`` vectorised logarithms (the symmetric kernel needs
one log per pair and class, nothing can do fewer), taken both by ``torch.log`` and by the C kernel's
own logarithm alone (on a cache-resident buffer, on the same threads).

Each configuration runs in a fresh subprocess so that the peak resident memory it reports belongs
to that configuration alone.

    python benchmarks/js_kernel.py                       # full grid, markdown table
    python benchmarks/js_kernel.py --n 1600 --k 103 --out js.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from _timing import median_time  # benchmarks/_timing.py (sys.path[0] is this folder)


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, n: int, k: int, repeats: int, threads: int) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, n, k, generator=gen) * 2.0
    p = torch.softmax(logits, dim=-1)  # float32, like CLIP patch distributions
    result: dict = {"method": method, "N": n, "K": k}
    if method in ("cdclip", "cdclip-torch", "cdclip-compile"):
        from cdclip.functional import pairwise_js
        from cdclip.kernels import js as js_mod

        backend = {"cdclip": "auto", "cdclip-torch": "torch", "cdclip-compile": "compile"}[method]
        if backend == "auto":
            result["backend"] = "native" if js_mod._native_library(requested=False) is not None else "torch"
        pairwise_js(p[:, :8], backend=backend)  # build / compile outside the measured region
        before = _rss_mib()
        out = pairwise_js(p, backend=backend)
        result["peak_mib_over_inputs"] = _peak_rss_mib() - before
        result["output_mib"] = out.numel() * out.element_size() / 2**20
        result["seconds"] = median_time(lambda: pairwise_js(p, backend=backend), repeats)
        if n <= 1600:
            from scipy.spatial.distance import cdist

            ref = cdist(p[0].double().numpy(), p[0].double().numpy(), "jensenshannon") ** 2
            result["max_abs_err_vs_scipy"] = float(np.abs(out[0].double().numpy() - ref).max())
    elif method == "scipy":
        from scipy.spatial.distance import cdist

        x = p[0].numpy()
        result["seconds"] = median_time(lambda: cdist(x, x, "jensenshannon") ** 2, max(1, repeats // 3))
    elif method == "naive":
        need_gib = n * n * k * 4 * 3 / 2**30
        if need_gib > 4:
            result["skipped"] = f"needs ~{need_gib:.0f} GiB"
            return result

        def naive():
            a, b = p[:, :, None, :], p[:, None, :, :]
            m = 0.5 * (a + b)
            kl = lambda x, y: torch.where(x > 0, x * (x / y).log(), torch.zeros(())).sum(-1)  # noqa: E731
            return 0.5 * kl(a.expand_as(m), m) + 0.5 * kl(b.expand_as(m), m)

        before = _rss_mib()
        naive()
        result["peak_mib_over_inputs"] = _peak_rss_mib() - before
        result["seconds"] = median_time(naive, max(1, repeats // 2))
    elif method == "log-floor":
        # N²K/2 float32 logarithms and nothing else, in blocks of the kernel's default size
        from cdclip.kernels.js import DEFAULT_BLOCK_ELEMENTS

        total = n * n * k // 2
        block = min(total, DEFAULT_BLOCK_ELEMENTS)
        src = torch.rand(block) + 0.5
        dst = torch.empty(block)
        reps, tail = divmod(total, block)

        def logs():
            for _ in range(reps):
                torch.log(src, out=dst)
            if tail:
                torch.log(src[:tail], out=dst[:tail])

        result["seconds"] = median_time(logs, repeats)
    elif method == "kernel-log-floor":
        # N²K/2 logarithms by the C kernel's own log, from and into a buffer that stays in L2,
        # on as many threads as the kernel uses for this size (one below its threading threshold)
        import threading

        from cdclip.kernels import js as js_mod

        library = js_mod._native_library(requested=True)
        if library is None:
            result["skipped"] = "no native kernel"
            return result
        threads = js_mod._native_threads(1, n, n, k, True, threads)
        result["threads"] = threads
        block = 1 << 15
        src, dst = [torch.rand(block) + 0.5 for _ in range(threads)], [torch.empty(block) for _ in range(threads)]
        calls = n * n * k // 2 // block

        def logs():
            def share(t: int) -> None:
                for _ in range(t, calls, threads):
                    library.cdclip_log_f32(src[t].data_ptr(), dst[t].data_ptr(), block)

            helpers = [threading.Thread(target=share, args=(t,)) for t in range(1, threads)]
            for h in helpers:
                h.start()
            share(0)
            for h in helpers:
                h.join()

        result["seconds"] = median_time(logs, repeats)
    return result


def run_child(method: str, n: int, k: int, repeats: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--n", str(n), "--k", str(k), "--repeats", str(repeats), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"method": method, "N": n, "K": k, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[400, 784, 1600, 4096])
    parser.add_argument("--k", type=int, nargs="+", default=[21, 45, 103])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scipy-max-n", type=int, default=1600, help="skip scipy above this N (it takes minutes)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile fast path")
    parser.add_argument(
        "--block-sweep", action="store_true", help="time the torch backend's block sizes 2**16..2**24 at N=1600, K=103"
    )
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.n[0], args.k[0], args.repeats, args.threads)))
        return

    import torch

    if args.block_sweep:
        from cdclip.functional import pairwise_js

        torch.set_num_threads(args.threads)
        p = torch.softmax(torch.randn(1, 1600, 103, generator=torch.Generator().manual_seed(0)) * 2, -1)
        print("| block_elements | MiB per buffer | seconds |\n|---|---|---|")
        for e in range(16, 25):
            sec = median_time(lambda e=e: pairwise_js(p, block_elements=1 << e, backend="torch"), args.repeats)
            print(f"| 2**{e} | {(1 << e) * 4 / 2**20:g} | {sec:.4f} |", flush=True)
        return

    methods = ["cdclip", "cdclip-torch", "scipy", "naive", "log-floor", "kernel-log-floor"]
    methods += ["cdclip-compile"] if args.compile else []
    rows = []
    print(f"torch {torch.__version__}, {args.threads} threads, float32, median of {args.repeats}")
    print()
    header = (
        "| N | K | cdclip (s) | torch blocks (s) | scipy cdist (s) | speed-up vs scipy | naive (s) "
        "| torch.log floor (s) | kernel log floor (s) | cdclip / kernel log | max abs err | peak MiB over inputs (output MiB) |"
    )
    if args.compile:
        header += " compiled (s) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    nan = float("nan")
    for n in args.n:
        for k in args.k:
            res = {m: run_child(m, n, k, args.repeats, args.threads) for m in methods if m != "scipy" or n <= args.scipy_max_n}
            rows.append(res)
            failed = {name: r["error"] for name, r in res.items() if "error" in r}
            if failed:
                print(f"| {n} | {k} | failed: {failed} |", flush=True)
                continue
            c, t, nv = res["cdclip"], res["cdclip-torch"], res["naive"]
            s = res.get("scipy", {})
            floor, kernel_floor = res["log-floor"].get("seconds", nan), res["kernel-log-floor"].get("seconds", nan)
            speedup = s["seconds"] / c["seconds"] if "seconds" in s else nan
            naive = f"{nv['seconds']:.3f}" if "seconds" in nv else nv.get("skipped", "n/a")
            line = (
                f"| {n} | {k} | {c['seconds']:.4f} ({c.get('backend', '?')}) | {t['seconds']:.4f} | "
                f"{s.get('seconds', nan):.3f} | {speedup:.0f}× | {naive} | {floor:.4f} | {kernel_floor:.4f} | "
                f"{c['seconds'] / kernel_floor:.2f} | {c.get('max_abs_err_vs_scipy', nan):.1e} | "
                f"{c['peak_mib_over_inputs']:.0f} ({c['output_mib']:.0f}) |"
            )
            if args.compile:
                line += f" {res['cdclip-compile'].get('seconds', nan):.4f} |"
            print(line, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
