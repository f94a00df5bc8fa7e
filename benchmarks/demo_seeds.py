"""The demo over several seeds: the table of docs/demo.md.

Runs ``primaps demo --seed N`` for each seed in a temporary folder, reads
the table it prints, and prints a Markdown table (Acc / mIoU in %) with
the mean over the seeds.  The numbers are the demo's, digit for digit:
they are read from its output, not recomputed.

    python benchmarks/demo_seeds.py            # seeds 0..4
    python benchmarks/demo_seeds.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile

ROWS = ("K-means baseline", "PriMaPs-EM teacher", "PriMaPs-EM student",
        "EM without masks, teacher", "linear probe (supervised)")
HEADER = ("K-means baseline", "PriMaPs-EM teacher", "PriMaPs-EM student",
          "EM without masks, teacher", "linear probe")


def demo_table(seed: int) -> dict[str, tuple[float, float]]:
    """{row: (acc, miou)} as `primaps demo --seed SEED` prints them."""
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([sys.executable, "-m", "primaps", "demo", "--seed", str(seed), "-q"],
                           cwd=d, capture_output=True, text=True, check=True)
    table = {}
    for line in p.stdout.splitlines():
        m = re.match(r"(.+?)\s+(\d+\.\d)\s+(\d+\.\d)$", line)
        if m:
            table[m.group(1).strip()] = (float(m.group(2)), float(m.group(3)))
    missing = [r for r in ROWS if r not in table]
    if missing:
        raise SystemExit(f"seed {seed}: the demo printed no row {missing}:\n{p.stdout}")
    return table


def markdown(tables: dict[int, dict[str, tuple[float, float]]]) -> str:
    lines = ["| seed | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for seed, t in tables.items():
        lines.append(f"| {seed} | " + " | ".join(f"{t[r][0]:.1f} / {t[r][1]:.1f}" for r in ROWS)
                     + " |")
    n = len(tables)
    means = [(sum(t[r][0] for t in tables.values()) / n, sum(t[r][1] for t in tables.values()) / n)
             for r in ROWS]
    lines.append("| mean | " + " | ".join(f"{a:.1f} / {m:.1f}" for a, m in means) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args()
    tables = {}
    for seed in args.seeds:
        tables[seed] = demo_table(seed)
        print(f"seed {seed} done", file=sys.stderr, flush=True)
    print(markdown(tables))


if __name__ == "__main__":
    main()
