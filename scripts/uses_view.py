"""Each use of the tied parameters of a sweep (or run) in its own colour, in TensorBoard.

    python scripts/uses_view.py outputs/multirun/2026-11-22/10-54-38                # a sweep folder
    python scripts/uses_view.py outputs/2026-11-22/10-30-00.412345-tied-xavier      # a single run's folder
    python scripts/uses_view.py outputs/multirun/2026-11-22/10-54-38 --out uses_view  # a folder of your choice
    python scripts/uses_view.py <folder> --dry-run                                   # check the arguments only

Builds a TensorBoard log directory with one run per use label (sum, input, output, t-0, t-1, ...,
depth 1, ...) from the per-use tags the runs logged, and prints the command that opens it. Each
chart is one job's parameter, with a line per use. The view is a copy, written outside the runs'
log directory (so the day's log directory keeps one TensorBoard run per job): run the command
again to refresh it. Exits 2 if the folder holds no run with per-use gradients.
"""

import argparse
import logging
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a sweep folder (outputs/multirun/<date>/<time>), a run folder, or a day's")
    parser.add_argument("--out", help="where to write the view (default: a folder of the system's temporary "
                                      "directory named after FOLDER)")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments only; read and write nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"dry run: would build the per-use view of {args.folder}" + (f" in {args.out}" if args.out else ""))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from experiments.telemetry.use_runs import default_view_dir, write_view

    out = args.out or default_view_dir(args.folder)
    try:
        runs = write_view(args.folder, out)
    except (FileNotFoundError, ValueError) as error:
        print(f"uses_view: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(runs)} runs ({', '.join(runs)}) to {out}; see them with:\ntensorboard --logdir {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
