"""Compare the runs of a sweep (or look at one run): a table, a CSV and figures.

    python scripts/report.py outputs/multirun/2026-11-22/10-54-38   # a sweep folder
    python scripts/report.py outputs/2026-11-22/10-30-00.412345-tied-xavier   # a single run's folder
    python scripts/report.py <folder> --no-figures                   # only report.md, report.csv and headline.csv
    python scripts/report.py <folder> --out reports/sweep-1          # write the report elsewhere
    python scripts/report.py <folder> --dry-run                      # check the arguments, read and write nothing

Writes report.md (the headline, then the jobs), report.csv, headline.csv and PNG figures into the
folder (or --out) and prints the report. The folder's files are read as data: a job whose files
cannot be read (a FIFO or a device where a file should be, a link out of the folder, a damaged or
oversized event file, a YAML alias bomb) is a failed job whose reason names the file. Exits 0 when
every job finished; 1 if a job failed, did not finish, or (a stopped sweep) never started; 2 if the
folder holds no run or the report cannot be written.
"""

import argparse
import logging
import sys



def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="a sweep folder (outputs/multirun/<date>/<time>) or a run folder")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--out", metavar="FOLDER", help="write the report here instead of into the folder read")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments only; read and write nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"dry run: would report {args.folder}" + (" without figures" if args.no_figures else ""))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    from experiments.errors import StorageError
    from experiments.report import write_report

    try:
        report = write_report(args.folder, figures=not args.no_figures, out=args.out)
    except (FileNotFoundError, StorageError) as error:
        print(f"report: {error}", file=sys.stderr)
        return 2
    print(report.text.split("\n## Figures")[0].rstrip())
    print("\nwrote " + ", ".join(str(p) for p in report.files))
    return 1 if report.failed or report.incomplete or report.missing else 0  # non-zero unless all finished


if __name__ == "__main__":
    sys.exit(main())
