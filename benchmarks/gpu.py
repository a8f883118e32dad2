"""GPU timings of the numerically heavy components (needs a CUDA device).

Pairwise JS, CDA refinement (``mean`` fusion, 3 present classes) and PAR, median of CUDA-event
timed repeats after warm-up, float32 inputs and bfloat16 inputs (computed in float32).

    python benchmarks/gpu.py --out gpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch


def cuda_time(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA device")
    from cdclip import CDAModule
    from cdclip.functional import pairwise_js, par

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    rows = []
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    print("| op | size | dtype in | ms | peak MiB |\n|---|---|---|---|---|")
    for n, k in ((1024, 45), (1600, 103), (4096, 103)):
        for dtype in (torch.float32, torch.bfloat16):
            p = torch.softmax(torch.randn(1, n, k, device=dev, generator=gen) * 2, -1).to(dtype)
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            sec = cuda_time(lambda p=p: pairwise_js(p), args.repeats)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append({"op": "pairwise_js", "N": n, "K": k, "dtype": str(dtype), "seconds": sec, "peak_mib": peak})
            print(f"| pairwise_js | N={n}, K={k} | {str(dtype)[6:]} | {sec * 1e3:.2f} | {peak:.0f} |")
    for side in (32, 40):
        n = side * side
        cams = torch.rand(1, 3, side, side, device=dev, generator=gen)
        probs = torch.softmax(torch.randn(1, n, 45, device=dev, generator=gen) * 3, -1)
        attn = torch.rand(1, n, n, device=dev, generator=gen)
        module = CDAModule(fusion="mean")
        sec = cuda_time(lambda m=module, c=cams, p=probs, a=attn: m(c, p, a), args.repeats)
        rows.append({"op": "cda_mean", "grid": side, "seconds": sec})
        print(f"| CDA mean (3 classes) | {side}x{side} grid | float32 | {sec * 1e3:.2f} | |")
    image = torch.rand(4, 3, 320, 320, device=dev, generator=gen)
    masks = torch.softmax(torch.randn(4, 21, 320, 320, device=dev, generator=gen), 1)
    sec = cuda_time(lambda: par(image, masks), args.repeats)
    rows.append({"op": "par", "batch": 4, "size": 320, "classes": 21, "seconds": sec})
    print(f"| PAR (20 iters, 6 dilations) | 4x21x320x320 | float32 | {sec * 1e3:.2f} | |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
