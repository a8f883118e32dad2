"""Fuzz every public component with the strategies of ``tests/fuzz_strategies.py`` (large profile).

Per component: cases run, returned ok (finite, correctly shaped output), ValueError, TypeError,
other exceptions, silent NaN/inf outputs and wrongly shaped outputs. The last three are bugs; the
first few of each are listed with the case that produced them.

    python benchmarks/fuzz.py                       # 5,200 cases, writes benchmarks/results/fuzz.{json,md}
    python benchmarks/fuzz.py --cases 20000 --seed 3
    python benchmarks/fuzz.py --only CDAModule PAR --cases 2000 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the strategies live beside the test that uses them

import torch  # noqa: E402
from fuzz_strategies import BUGS, OUTCOMES, STRATEGIES, Case, outcome  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402

RESULTS = HERE / "results"


def fuzz_component(name: str, cases: int, seed: int, examples: int) -> dict[str, object]:
    """Run ``cases`` generated cases of one component; counts per outcome and the first bug examples."""
    counts: Counter[str] = Counter()
    bugs: list[dict[str, str]] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # count every case once: no shrinking, no replay
        suppress_health_check=list(HealthCheck),
    )
    @given(case=STRATEGIES[name]())
    def run(case: Case) -> None:
        kind, detail = outcome(case)
        counts[kind] += 1
        if kind in BUGS and len(bugs) < examples:
            bugs.append({"outcome": kind, "case": case.what, "detail": detail[:300]})

    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    return {"cases": sum(counts.values()), **{k: counts[k] for k in OUTCOMES}, "seconds": round(seconds, 2), "bugs": bugs}


def markdown(result: dict[str, object]) -> str:
    rows = result["components"]
    lines = [
        f"Fuzzing the public components: {result['total']['cases']} cases, seed {result['seed']}, "
        f"torch {result['torch']}, {result['threads']} thread(s)\n",
        f"    {result['command']}\n",
        "| component | cases | ok | ValueError | TypeError | other | NaN | shape | s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in [*rows.items(), ("**total**", result["total"])]:
        cells = " | ".join(str(row[k]) for k in ("cases", "ok", "ValueError", "TypeError", "other", "nan", "shape"))
        lines.append(f"| {name} | {cells} | {row.get('seconds', '')} |")
    examples = [(name, bug) for name, row in rows.items() for bug in row["bugs"]]
    if examples:
        lines += ["", "Bugs found (first cases per component):", ""]
        lines += [f"- {name}: {bug['outcome']} — {bug['case']}: {bug['detail']}" for name, bug in examples]
    else:
        lines += ["", "No other exception, silent NaN or wrongly shaped output."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5200, help="cases in total, split evenly over the components")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, choices=sorted(STRATEGIES), help="fuzz only these")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=5, help="bug examples kept per component")
    parser.add_argument("--no-write", action="store_true", help="print only, write no results")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here (and .md beside) instead of results/")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    names = args.only or list(STRATEGIES)
    per = max(1, -(-args.cases // len(names)))
    components = {}
    for name in names:
        components[name] = fuzz_component(name, per, args.seed, args.examples)
        row = components[name]
        print(f"{name:<22} " + " ".join(f"{k}={row[k]}" for k in ("cases", *OUTCOMES)) + f" ({row['seconds']} s)", flush=True)
    total = {k: sum(row[k] for row in components.values()) for k in ("cases", *OUTCOMES)}
    total["seconds"] = round(sum(row["seconds"] for row in components.values()), 1)
    result = {
        "command": "python benchmarks/fuzz.py " + " ".join(sys.argv[1:]),
        "seed": args.seed,
        "cases_requested": args.cases,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "components": components,
        "total": total,
    }
    text = markdown(result)
    print("\n" + text)
    if not args.no_write:
        out = args.out or RESULTS / "fuzz.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        out.with_suffix(".md").write_text(text)
        print(f"wrote {out} and {out.with_suffix('.md')}")
    return 1 if any(total[k] for k in BUGS) else 0


if __name__ == "__main__":
    raise SystemExit(main())
