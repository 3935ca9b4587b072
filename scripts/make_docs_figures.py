"""Run the documentation's experiments and write its figures and numbers from them (re-runnable).

    python scripts/make_docs_figures.py             # every sweep below (a few minutes on 2 CPU cores), then the rest
    python scripts/make_docs_figures.py --reuse     # keep the finished sweeps in --runs: redo reports, figures, numbers
    python scripts/make_docs_figures.py --dry-run   # print the commands, run and write nothing

Each sweep runs through the real command line (``python train.py -m ...``, one torch thread, so the
numbers are the same on every run of this script on the CPU) into ``--runs``, and is reported with
``scripts/report.py``'s code. Then it writes, for the pages to include:

- ``docs/figures/*.png``: figures of the reports, and two drawn here from the per-use tags
  (``hugging_face_ties.png``: the embedding ties of ``tied_lm``, ``hf_gpt2``, ``hf_albert``;
  ``albert_depth_uses.png``: ALBERT's shared layer at each depth);
- ``docs/snippets/<sweep>_headline.md``, ``<sweep>_jobs.md``: the reports' headline and job tables;
  ``init_scale_table.md``: the final validation loss of every model and init;
- ``docs/snippets/numbers.json``: every number the pages' text quotes (``{{ weight_tying.tied.ratio_step1:.2f }}``
  in a page is replaced by it when the site is built: ``mkdocs_hooks.py``), and how long each sweep took.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SWEEPS = {  # name -> the command's arguments (python train.py ...)
    "weight_tying": ["-m", "experiment=weight_tying"],
    "weight_tying_seeds": ["-m", "experiment=weight_tying", "tying=tied", "trainer.seed=0,1,2,3,4"],
    "bptt": ["-m", "experiment=bptt"],
    "shared_depth": ["-m", "experiment=shared_depth"],
    "init_scale": ["-m", "model=mlp,nested,tied", "init=default,normal,xavier"],
    "kaiming": ["-m", "model=nested", "init=kaiming", "optim.lr=0.01,0.03", "trainer.seed=0,1,2"],
    "hf_models": ["-m", "model=tied_lm,hf_gpt2,hf_albert", "data=zipf_text", "optim=adam", "optim.lr=0.003",
                  "trainer.epochs=3"],
    "albert_depth": ["-m", "model=hf_albert", "data=zipf_text", "optim=adam", "optim.lr=0.003", "trainer.epochs=3",
                     "model.config.num_hidden_layers=2,4"],
}
FIGURES = {  # (sweep, report figure) -> docs/figures/<name>
    ("weight_tying", "tied_grad_norms.png"): "weight_tying_uses.png",
    ("weight_tying", "val_loss.png"): "weight_tying_val_loss.png",
    ("bptt", "grad_through_time.png"): "bptt_through_time.png",
    ("bptt", "val_loss.png"): "bptt_val_loss.png",
    ("shared_depth", "tied_grad_norms.png"): "shared_depth_uses.png",
    ("shared_depth", "val_loss.png"): "shared_depth_val_loss.png",
    ("init_scale", "val_loss.png"): "init_scale_val_loss.png",
}
ALBERT_LAYER = "albert.encoder.albert_layer_groups.0.albert_layers.0."  # the one layer ALBERT calls at every depth
ALBERT_WEIGHTS = ("attention.query", "attention.key", "attention.value", "attention.dense", "ffn", "ffn_output")
EMBEDDING_TIES = {"tied_lm": "0.weight", "hf_gpt2": "transformer.wte.weight",
                  "hf_albert": "albert.embeddings.word_embeddings.weight"}


def run_sweep(name: str, folder: Path, reuse: bool) -> float:
    """Run one sweep into ``folder`` (afresh unless ``reuse`` and it finished); its wall time in seconds."""
    from experiments.runs import load_jobs

    made = folder / "made_by.json"  # the sweep's arguments and how long it took
    if reuse and made.is_file() and json.loads(made.read_text())["args"] == SWEEPS[name] and \
            all(j.status == "ok" for j in load_jobs(folder)):
        return json.loads(made.read_text())["seconds"]
    shutil.rmtree(folder, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    subprocess.run([sys.executable, "train.py", *SWEEPS[name], f"hydra.sweep.dir={folder}"], cwd=ROOT, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    made.write_text(json.dumps({"args": SWEEPS[name], "seconds": round(seconds, 1)}) + "\n")
    return seconds


def job(jobs, *overrides: str):
    """The one job whose overrides include all of these."""
    (found,) = [j for j in jobs if set(overrides) <= set(j.overrides)]
    return found


def at(job, tag: str, step: str = "first") -> float:
    curve = job.curves[tag]
    return curve[0][2] if step == "first" else curve[-1][2]


def logged(job, pattern: str) -> float:
    """A number the run's log states (``Unigram entropy 4.716 nats``)."""
    return float(re.search(pattern, (job.path / "train.log").read_text()).group(1))


def headline_numbers(lines, job_name: str, quantity: str, param: str = None) -> dict:
    (line,) = [ln for ln in lines if ln.job == job_name and ln.quantity == quantity and param in (None, ln.param)]
    return {"step1": line.at_start, "median": line.median, "end": line.at_end}


def weight_tying(jobs, seeds) -> dict:
    from experiments.headline import headline
    from experiments.telemetry import tags

    lines = headline(jobs)
    use = lambda j, u, s, step="first": at(j, tags.use_stat("0.weight", u, s), step)  # noqa: E731
    tied, x10, untied = (job(jobs, f"tying={t}") for t in ("tied", "tied_input_x10", "untied"))
    seed = lambda j: int(next(o for o in j.overrides if o.startswith("trainer.seed=")).partition("=")[2])  # noqa: E731
    ratios = {seed(j): headline_numbers(headline([j]), j.name, "output / input")["step1"] for j in seeds}
    return {
        "tied": {**{f"ratio_{k}": v for k, v in headline_numbers(lines, tied.name, "output / input").items()},
                 "in_norm_step1": use(tied, "0.weight", "grad_norm"), "out_norm_step1": use(tied, "5.weight", "grad_norm"),
                 "rows_in_step1": use(tied, "0.weight", "rows_touched"), "rows_out_step1": use(tied, "5.weight", "rows_touched"),
                 "cos_in_step1": use(tied, "0.weight", "cos"), "cos_out_step1": use(tied, "5.weight", "cos"),
                 "share_in_end": headline_numbers(lines, tied.name, "share of input")["end"]},
        "x10": {"ratio_step1": headline_numbers(lines, x10.name, "output / input")["step1"],
                "cos_in_step1": use(x10, "0.weight", "cos"), "cos_in_end": use(x10, "0.weight", "cos", "last"),
                "cos_out_step1": use(x10, "5.weight", "cos"), "cos_out_end": use(x10, "5.weight", "cos", "last")},
        "loss_val": {"tied": at(tied, tags.LOSS_VAL, "last"), "x10": at(x10, tags.LOSS_VAL, "last"),
                     "untied": at(untied, tags.LOSS_VAL, "last")},
        "seeds": {"min": min(ratios.values()), "max": max(ratios.values()), "first": min(ratios), "last": max(ratios),
                  "argmin": min(ratios, key=ratios.get), "argmax": max(ratios, key=ratios.get)},
        "unigram_entropy": logged(tied, r"Unigram entropy ([\d.]+) nats"),
        "floor": logged(tied, r"cross-entropy ([\d.]+) nats"),
        "epochs": len(tied.curves[tags.LOSS_VAL]), "steps": tied.steps,
    }


def bptt(jobs) -> dict:
    from experiments.headline import headline
    from experiments.telemetry import tags

    lines = headline(jobs)
    out = {"unigram_entropy": logged(jobs[0], r"Unigram entropy ([\d.]+) nats")}
    for gain in ("0.5", "1.0", "2.0"):
        g = gain.replace(".", "_")
        for clip, c in (("null", "unclipped"), ("0.25", "clipped")):
            j = job(jobs, f"init.gain={gain}", f"trainer.clip_grad_norm={clip}")
            out[f"gain{g}_{c}"] = {**headline_numbers(lines, j.name, "t-7 / t-0"),
                                   "loss_val": at(j, tags.LOSS_VAL, "last"), "acc_val": at(j, tags.ACC_VAL, "last")}
    return out


def shared_depth(jobs) -> dict:
    from experiments.headline import headline
    from experiments.telemetry import tags

    lines, out = headline(jobs), {}
    for depth in (2, 4, 8):
        j = job(jobs, f"model.depth={depth}")
        norms = [at(j, tags.use_stat("1.inner.weight", u, "grad_norm")) for u in j.uses("1.inner.weight")]
        out[f"depth{depth}"] = {
            "norm_min_step1": min(norms), "norm_max_step1": max(norms),
            "sum_step1": at(j, tags.tied_grad_norm("1.inner.weight")),
            "spread": headline_numbers(lines, j.name, "largest / smallest"),
            "cancellation": headline_numbers(lines, j.name, "cancellation"),
            "acc_val": at(j, tags.ACC_VAL, "last"), "loss_val": at(j, tags.LOSS_VAL, "last")}
    return out


def hugging_face(jobs) -> dict:
    """``model=tied_lm``, ``hf_gpt2`` and ``hf_albert`` on zipf_text: losses, sizes, each embedding tie's uses."""
    from experiments.headline import headline
    from experiments.telemetry import tags

    lines, out = headline(jobs), {}
    for model, param in EMBEDDING_TIES.items():
        j = job(jobs, f"model={model}")
        roles = {role: use for use, role in j.use_roles(param).items()}
        out[model] = {"loss_val": at(j, tags.LOSS_VAL, "last"), "acc_val": at(j, tags.ACC_VAL, "last"),
                      "parameters": int(logged(j, r"\((\d+) parameters")),
                      "ratio": headline_numbers(lines, j.name, "output / input", param),
                      "rows_in_step1": at(j, tags.use_stat(param, roles["input"], "rows_touched")),
                      "cos_out_step1": at(j, tags.use_stat(param, roles["output"], "cos")),
                      "cos_out_end": at(j, tags.use_stat(param, roles["output"], "cos"), "last")}
    tied_lm = job(jobs, "model=tied_lm")
    out["unigram_entropy"] = logged(tied_lm, r"Unigram entropy ([\d.]+) nats")
    out["floor"] = logged(tied_lm, r"cross-entropy ([\d.]+) nats")
    out["epochs"], out["steps"] = len(tied_lm.curves[tags.LOSS_VAL]), tied_lm.steps
    return out


def albert_depth(jobs) -> dict:
    """ALBERT's one layer called at 2 and 4 depths: each depth's gradient of the layer's weight matrices."""
    from experiments.telemetry import tags

    out = {}
    for depths in (2, 4):
        j = job(jobs, f"model.config.num_hidden_layers={depths}")
        per = {}
        for leaf in ALBERT_WEIGHTS:
            param = f"{ALBERT_LAYER}{leaf}.weight"
            by_depth = {role: use for use, role in j.use_roles(param).items()}
            assert list(by_depth) == [f"depth {k}" for k in range(1, depths + 1)], by_depth
            norms = {step: [at(j, tags.use_stat(param, by_depth[f"depth {k}"], "grad_norm"), step)
                            for k in range(1, depths + 1)] for step in ("first", "last")}
            per[leaf.replace("attention.", "")] = {
                f"{name}_{when}": value for step, when in (("first", "step1"), ("last", "end"))
                for name, value in (("first_over_last", norms[step][0] / norms[step][-1]),
                                    ("spread", max(norms[step]) / min(norms[step])),
                                    ("spread_after_first", max(norms[step][1:]) / min(norms[step][1:])),
                                    ("depth1", norms[step][0]), ("last", norms[step][-1]),
                                    ("cancellation", at(j, tags.cancellation(param), step)))}
        out[f"depth{depths}"] = {
            **per, "loss_val": at(j, tags.LOSS_VAL, "last"), "acc_val": at(j, tags.ACC_VAL, "last"),
            # what the layer reads at depth 1 (the embeddings mapped to the hidden size) and at depth 2 (its own
            # output, after its last LayerNorm): the spread of each at step 1
            "input_std_step1": at(j, tags.activation("albert.encoder.embedding_hidden_mapping_in", "std")),
            "layer_out_std_step1": at(j, tags.activation(f"{ALBERT_LAYER}full_layer_layer_norm", "std"))}
        depth = out[f"depth{depths}"]  # a query's and a key's gradient grow with the square of the input's scale
        depth["input_scale_squared"] = (depth["input_std_step1"] / depth["layer_out_std_step1"]) ** 2
    return out


def draw_uses(path: Path, panels) -> None:
    """A figure of per-use gradient norms: one panel per (job, parameter, title), the sum in black and each
    use in its own colour, labelled by its role."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from experiments.telemetry import tags

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (j, param, title) in zip(axes[0], panels):
        curve = j.curves[tags.tied_grad_norm(param)]
        ax.plot([s for s, _, _ in curve], [v for _, _, v in curve], color="black", linewidth=2, label="sum (.grad)")
        for use, role in j.use_roles(param).items():
            curve = j.curves[tags.use_stat(param, use, "grad_norm")]
            ax.plot([s for s, _, _ in curve], [v for _, _, v in curve], linewidth=1.2, label=role)
        ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="gradient norm", title=title)
        ax.title.set_fontsize("medium")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def init_scale(jobs, kaiming) -> dict:
    import torch

    from experiments.config import compose_config
    from experiments.data import load_data
    from experiments.telemetry import tags

    data = load_data(compose_config([]).data, 0)
    mean_loss = torch.mean((data.val_y - data.train_y.mean()) ** 2).item()  # always predicting the training mean
    loss = {m: {i: at(job(jobs, f"model={m}", f"init={i}"), tags.LOSS_VAL, "last") for i in ("default", "normal", "xavier")}
            for m in ("mlp", "nested", "tied")}
    tied = {i: job(jobs, "model=tied", f"init={i}") for i in ("normal", "xavier")}
    nested = {i: job(jobs, "model=nested", f"init={i}") for i in ("default", "normal", "xavier")}
    dead = lambda j, step: sum(at(j, t, step) == 1.0 for t in j.curves  # noqa: E731
                               if re.fullmatch(r"act/0\.block \d+\.3/dead_frac", t))
    first = lambda j: next((s for s, _, v in j.curves[tags.grad_norm("0.block 0.0.weight")] if v == 0), None)  # noqa: E731
    return {
        "mean_loss": mean_loss, "target_std": data.val_y.std().item(), "loss_val": loss,
        "stuck": {"min": min(v for m in loss.values() for v in m.values() if v > mean_loss / 2),
                  "max": max(v for m in loss.values() for v in m.values())},
        "tied": {i: {"out_std_step1": at(j, tags.activation("6", "std")), "first_grad_step1": at(j, tags.grad_norm("0.weight")),
                     "last_bias_grad_step1": at(j, tags.grad_norm("6.bias"))} for i, j in tied.items()},
        "nested": {i: {"out_std_step1": at(j, tags.activation("1", "std")), "dead_step1": dead(j, "first"),
                       "dead_end": dead(j, "last"), "first_grad_zero_from": first(j),
                       "first_grad_end": at(j, tags.grad_norm("0.block 0.0.weight"), "last")} for i, j in nested.items()},
        "kaiming": {f"lr{lr.replace('.', '_')}": {"min": min(losses), "max": max(losses), "seeds": len(losses)}
                    for lr in ("0.01", "0.03")
                    for losses in [[at(j, tags.LOSS_VAL, "last") for j in kaiming if f"optim.lr={lr}" in j.overrides]]},
    }


def section(report_md: str, title: str) -> str:
    """The body of a ``## title`` section of a report.md."""
    body = report_md.split(f"## {title}\n", 1)[1]
    return body.split("\n## ", 1)[0].strip() + "\n"


def init_scale_table(numbers: dict) -> str:
    rows = ["| model | init=default | init=normal | init=xavier |", "|---|---:|---:|---:|"]
    for model, by_init in numbers["loss_val"].items():
        rows.append(f"| `model={model}` | " + " | ".join(f"{v:.3g}" for v in by_init.values()) + " |")
    return "\n".join(rows) + "\n"


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "docs_figures", help="where the sweeps run")
    parser.add_argument("--reuse", action="store_true", help="keep sweeps that finished in --runs")
    parser.add_argument("--dry-run", action="store_true", help="print the commands; run and write nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        for name, sweep in SWEEPS.items():
            print("dry run: OMP_NUM_THREADS=1 python train.py " + " ".join(f"'{a}'" if "," in a else a for a in sweep)
                  + f" hydra.sweep.dir={args.runs / name}")
        return 0
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from experiments.report import write_report
    from experiments.runs import load_jobs

    seconds, jobs = {}, {}
    for name in SWEEPS:
        print(f"{name}: python train.py {' '.join(SWEEPS[name])}", flush=True)
        seconds[name] = run_sweep(name, args.runs / name, args.reuse)
        write_report(args.runs / name)
        jobs[name] = load_jobs(args.runs / name)
    numbers = {"weight_tying": weight_tying(jobs["weight_tying"], jobs["weight_tying_seeds"]),
               "bptt": bptt(jobs["bptt"]), "shared_depth": shared_depth(jobs["shared_depth"]),
               "init_scale": init_scale(jobs["init_scale"], jobs["kaiming"]),
               "hugging_face": hugging_face(jobs["hf_models"]), "albert": albert_depth(jobs["albert_depth"]),
               "seconds": {**{k: round(v) for k, v in seconds.items()}, "total": round(sum(seconds.values()))}}
    (DOCS / "figures").mkdir(exist_ok=True)
    (DOCS / "snippets").mkdir(exist_ok=True)
    for (name, figure), target in FIGURES.items():
        shutil.copyfile(args.runs / name / figure, DOCS / "figures" / target)
    hf = jobs["hf_models"]
    draw_uses(DOCS / "figures" / "hugging_face_ties.png",
              [(job(hf, f"model={m}"), p, f"{m}: {p.replace('albert.embeddings.', '')}")
               for m, p in EMBEDDING_TIES.items()])
    albert = job(jobs["albert_depth"], "model.config.num_hidden_layers=4")
    draw_uses(DOCS / "figures" / "albert_depth_uses.png",
              [(albert, f"{ALBERT_LAYER}{leaf}.weight", f"{leaf}.weight, 4 depths")
               for leaf in ("attention.query", "attention.value", "ffn")])
    for name in ("weight_tying", "bptt", "shared_depth"):
        text = (args.runs / name / "report.md").read_text()
        (DOCS / "snippets" / f"{name}_headline.md").write_text(section(text, "Headline"))
        (DOCS / "snippets" / f"{name}_jobs.md").write_text(section(text, "Jobs, best validation loss first"))
    (DOCS / "snippets" / "init_scale_table.md").write_text(init_scale_table(numbers["init_scale"]))
    (DOCS / "snippets" / "numbers.json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    print(f"wrote {DOCS / 'figures'} ({len(FIGURES) + 2} figures) and {DOCS / 'snippets'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main(sys.argv[1:]))
