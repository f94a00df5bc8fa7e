"""Render the fuzz report (JSON written by a pytest run of
tests/test_fuzz.py) as the Markdown table of tests/RELIABILITY.md.

    python tests/fuzz/report.py [/tmp/primaps-fuzz-report.json]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

FAULTS = {
    "wrong_type": "None, str, bytes, dict, set, object() (TypeError)",
    "bad_dtype": "bool, complex, object, str, datetime arrays (TypeError)",
    "float_ids": "floats where integer ids are due (TypeError)",
    "ndim": "too few or too many axes (ValueError)",
    "mismatch": "a size that must match another argument's (ValueError)",
    "bad_value": "ids, sizes or parameters out of range (ValueError)",
    "nonfinite": "NaN, inf, -inf (ValueError where refused)",
    "huge": "±3e38, 1e30 (a result or a documented error)",
    "empty": "a zero-length axis (a result or a documented error)",
    "loose": "faults that cannot decide the outcome (e.g. in an image an index skips)",
}


def main(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    print("| entry (also covers) | cases | ok | TypeError | ValueError | MemoryError | faults tried (cases) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    total = 0
    for name, r in sorted(report.items()):
        o = r["outcomes"]
        faults = ", ".join(f"{k} {v}" for k, v in sorted(r["faults"].items()))
        also = ", ".join(f"`{c}`" for c in r.get("covers", [])[1:])
        name_cell = f"`{name}`" + (f" ({also})" if also else "")
        print(f"| {name_cell} | {r['cases']} | {o.get('ok', 0)} | {o.get('TypeError', 0)} | "
              f"{o.get('ValueError', 0)} | {o.get('MemoryError', 0)} | {faults} |")
        total += r["cases"]
    print(f"\n{total} cases in all.\n")
    print("Fault kinds:\n")
    for k, v in FAULTS.items():
        print(f"- `{k}`: {v}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.gettempdir(),
                                                             "primaps-fuzz-report.json"))
