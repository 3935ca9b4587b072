"""Training speed against a plain PyTorch loop, in one process; cold start; logging cost growth; 2 processes.

    python scripts/bench.py                      # the full run behind the docs' performance table (a few minutes)
    python scripts/bench.py --repeats 1 --quick  # a smoke run
    python scripts/bench.py --processes 0        # without the distributed table (torchrun, 2 processes vs 1)
    python scripts/bench.py --workloads hf_gpt2  # one workload (tiny, wide, hf_gpt2; default: every one installed)
    python scripts/bench.py --dry-run            # check the arguments, run nothing
    pip install -e ".[bench]"                    # adds Lightning, the peer in the table
    pip install -e ".[transformers]"             # adds hf_gpt2, and the lens's cost per step and memory on it

Prints a Markdown table and writes it, with the raw numbers as JSON, to --out.
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="alternated repeats of every variant (median)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--processes", type=int, default=2,
                        help="the wide workload in this many processes (torchrun) against one; 0: leave it out")
    parser.add_argument("--workloads", nargs="+", metavar="NAME", help="which workloads (tiny, wide, hf_gpt2; "
                        "default: every one whose libraries are installed)")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench", help="folder for bench.md/.json")
    parser.add_argument("--dry-run", action="store_true", help="check the arguments only; run nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        print(f"dry run: would run {args.repeats} repeat(s){' (quick)' if args.quick else ''} into {args.out}")
        return 0
    from experiments.benchmark import run_benchmark

    sizes = dict(epochs=1, n_train=1024, growth_counts=(10, 20), start_repeats=1) if args.quick else \
        dict(epochs={"tiny": 8, "wide": 3, "hf_gpt2": 1}, n_train=16384, growth_counts=(10, 100, 1000))
    command = "python scripts/bench.py " + " ".join(argv)  # (argv without --dry-run: that returned above)
    result = run_benchmark(args.repeats, root=ROOT, command=command.strip(), processes=args.processes,
                           workloads=args.workloads, **sizes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(result["markdown"])
    (args.out / "bench.json").write_text(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2))
    print(result["markdown"])
    print(f"wrote {args.out / 'bench.md'} and {args.out / 'bench.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
