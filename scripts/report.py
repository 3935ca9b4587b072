"""Compare the jobs of a sweep, or look at one run: ``python scripts/report.py <sweep or run folder>``.

Writes report.md, report.csv, val_loss.png, param_norms.png (and tied_grads.png for tied models)
into the folder and prints the table.
"""

import os
import sys
from pathlib import Path

# scripts/inspect.py is named like the standard library's `inspect`: keep this folder off the path.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]


def main(argv):
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python scripts/report.py <sweep or run folder>", file=sys.stderr)
        return 2
    from experiments.report import write_report

    folder = Path(argv[0])
    table = write_report(folder)
    if table is None:
        print(f"error: no runs under {folder} (a run folder has .hydra/config.yaml)", file=sys.stderr)
        return 1
    print((folder / "report.md").read_text())
    print(f"wrote {folder / 'report.md'}, {folder / 'report.csv'} and the figures")
    return 1 if any(row["status"] != "ok" for row in table) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
