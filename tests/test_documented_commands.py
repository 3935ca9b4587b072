"""Every command the README and the docs show runs as written, parsed by a real shell.

A command is a ``python train.py ...``, ``torchrun --<options> train.py ...``, ``python scripts/...``
or ``scripts/... <args>`` (optionally after ``sudo`` or ``VAR=value``) on a line of a ```` ```bash ```` block (``\\`` continues a line) or in
an inline code span. A command with a ``<placeholder>`` or ``...`` is a synopsis, not a command,
and is left out.

The fast test has bash parse each command (quotes, braces, comments: what a user's shell does) and
checks what bash hands over: ``train.py``'s overrides are composed with Hydra's compose API, as
``--cfg job`` composes them (a sweep, ``-m``, on its first job's values: Hydra cannot ``--cfg`` a
sweep), and each script runs in-process with its ``--dry-run`` flag. The slow test runs every
command itself through ``bash -c`` with ``--cfg job`` or ``--dry-run`` appended.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from conftest import CONF, ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
COMMAND = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(?:sudo\s+)?(?:python\s+(?:train\.py|scripts/\S+)(?:\s|$)|scripts/\S+\s+\S"
                     r"|torchrun\s+(?:--\S+\s+)*train\.py(?:\s|$))")
TORCHRUN = re.compile(r"torchrun\s+(?:--\S+\s+)*train\.py")  # its own options, then the script and its arguments
SHELL_BLOCKS = ("bash", "sh", "shell")


@dataclass
class Command:
    where: str  # file:line
    text: str  # as written, without a trailing comment

    def __str__(self):
        return f"{self.where}: {self.text}"


def without_comment(line: str) -> str:
    """The line up to a ``#`` that starts a shell comment (outside quotes, after a blank)."""
    quote, escaped = None, False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands_in(text: str, where: str) -> List[Command]:
    found = []
    fence, lines = None, text.splitlines()
    i = 0
    while i < len(lines):
        line, number = lines[i], i + 1
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().split()[0] if stripped[3:].strip() else ""
            i += 1
            continue
        if fence is not None:
            if fence in SHELL_BLOCKS:
                while stripped.endswith("\\") and i + 1 < len(lines):  # a continued line
                    i += 1
                    stripped = stripped[:-1].rstrip() + " " + lines[i].strip()
                for part in without_comment(stripped).split(" && "):
                    if COMMAND.match(part.strip()):
                        found.append(Command(f"{where}:{number}", part.strip()))
        else:
            for span in re.findall(r"(?<!`)`([^`]+)`(?!`)", line):
                if COMMAND.match(span.strip()):
                    found.append(Command(f"{where}:{number}", span.strip()))
        i += 1
    return found


def is_synopsis(command: Command) -> bool:
    return bool(re.search(r"<[^>]+>", command.text)) or "..." in command.text or "…" in command.text


def documented_commands() -> List[Command]:
    """Every command, once (the first place it is written), without synopses."""
    found = {}
    for path in DOCUMENTS:
        for command in commands_in(path.read_text(), str(path.relative_to(ROOT))):
            if not is_synopsis(command):
                found.setdefault(command.text, command)
    return list(found.values())


def shell_argv(command: Command) -> List[str]:
    """The arguments bash makes of the command (with ``sudo`` and ``VAR=value`` prefixes)."""
    result = subprocess.run(["bash", "-c", 'rec() { printf "%s\\0" "$@"; }; rec ' + command.text],
                            capture_output=True, timeout=10)
    assert result.returncode == 0, f"{command}\nbash: {result.stderr.decode()}"
    argv = result.stdout.decode().split("\0")[:-1]
    while argv and (argv[0] == "sudo" or re.match(r"^[A-Z_][A-Z0-9_]*=", argv[0])):
        argv.pop(0)
    return argv


def one_job(args: List[str], pick: Optional[Tuple[int, int]] = None) -> List[str]:
    """A sweep's arguments as its first job gets them: ``-m`` dropped, each swept key at its first value
    (``pick=(i, k)``: the i-th argument at its k-th value instead)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = []
    for i, arg in enumerate(args):
        if arg in ("-m", "--multirun"):
            continue
        override = parser.parse_override(arg)
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            k = pick[1] if pick and pick[0] == i else 0
            arg = f"{override.get_key_element()}={values[k]}"
        out.append(arg)
    return out


def every_value(args: List[str]) -> List[List[str]]:
    """The first job of a sweep, and one job for every other value of each swept key (the rest at
    their first values): each value composes, without the whole grid."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    jobs = [one_job(args)]
    for i, arg in enumerate(args):
        if arg not in ("-m", "--multirun") and parser.parse_override(arg).is_sweep_override():
            jobs += [one_job(args, (i, k)) for k in range(1, len(list(parser.parse_override(arg).sweep_string_iterator())))]
    return jobs


def compose_train(args: List[str]) -> None:
    """What ``python train.py <args> --cfg job`` composes, with Hydra's compose API; a sweep's every value."""
    from hydra import compose, initialize_config_dir

    if args in (["--help"], ["-h"]):
        return
    assert not [a for a in args if a.startswith("-") and a not in ("-m", "--multirun")], f"unknown flag in {args}"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for job in every_value(args):
            compose(config_name="config", overrides=job, return_hydra_config=True)


def dry_run_script(script: str, args: List[str]) -> None:
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    if path.suffix == ".sh":
        result = subprocess.run(["bash", str(path), *args, "--dry-run"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        return
    spec = importlib.util.spec_from_file_location(f"documented_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with redirect_stdout(io.StringIO()) as out:
        code = module.main([*args, "--dry-run"])
    assert code == 0, out.getvalue()
    assert "dry run" in out.getvalue()


def check(command: Command) -> None:
    argv = shell_argv(command)
    if argv[0] == "python":
        argv = argv[1:]
    elif argv[0] == "torchrun":  # each process runs train.py with these arguments
        argv = argv[argv.index("train.py"):]
    script, args = argv[0], argv[1:]
    try:
        if script == "train.py":
            from experiments.failures import literal_resume_argument

            compose_train(literal_resume_argument([script, *args])[1:])  # as train.py reads its arguments
        else:
            dry_run_script(script, args)
    except (Exception, SystemExit) as error:  # SystemExit: argparse refusing the arguments
        raise AssertionError(f"{command}\n  does not compose: {type(error).__name__}: {error}") from None


def test_documents_have_commands_and_synopses_are_few():
    commands = documented_commands()
    assert len(commands) > 50, [str(c) for c in commands]
    assert any("'+model.grad_scale={4.weight:0.5,4.bias:0.5}'" in c.text for c in commands)


def test_extraction_reads_blocks_spans_continuations_and_comments():
    text = "\n".join([
        "Run `python train.py model=tied` or `scripts/report.py` (a file) or `python scripts/report.py <folder>`.",
        "```bash",
        "pip install -e . && python train.py init=xavier   # a comment 'with quotes'",
        "python train.py -m hydra/launcher=cluster \\",
        "    init=normal,xavier",
        "OMP_NUM_THREADS=1 python scripts/bench.py",
        "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 train.py model=tied_lm",
        "tensorboard --logdir outputs",
        "```",
        "```",
        "python train.py not-a-shell-block",
        "```",
    ])
    found = [c.text for c in commands_in(text, "x") if not is_synopsis(c)]
    assert found == ["python train.py model=tied", "python train.py init=xavier",
                     "python train.py -m hydra/launcher=cluster init=normal,xavier",
                     "OMP_NUM_THREADS=1 python scripts/bench.py",
                     "OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 train.py model=tied_lm"]


def test_an_unquoted_brace_override_is_caught():
    """What the issue found: bash splits ``{a,b}`` into two arguments and Hydra refuses them."""
    with pytest.raises(AssertionError, match="does not compose"):
        check(Command("x", "python train.py model=tied +model.grad_scale={4.weight:0.5,4.bias:0.5}"))
    check(Command("x", "python train.py model=tied '+model.grad_scale={4.weight:0.5,4.bias:0.5}'"))
    with pytest.raises(AssertionError, match="does not compose"):
        check(Command("x", "python train.py -m model=tied,nope init=xavier"))  # a sweep: every value is composed
    with pytest.raises(AssertionError, match="does not compose"):
        check(Command("x", "python scripts/report.py --no-such-flag folder"))
    with pytest.raises(AssertionError, match="does not compose"):
        check(Command("x", "torchrun --standalone --nproc_per_node=2 train.py model=nope"))


@pytest.mark.parametrize("command", documented_commands(), ids=str)
def test_every_documented_command_composes(command):
    check(command)


def through_bash(command: Command) -> subprocess.CompletedProcess:
    """The command itself in ``bash -c``, with ``--cfg job`` (train.py) or ``--dry-run`` appended."""
    text = re.sub(r"^((?:[A-Z_][A-Z0-9_]*=\S+\s+)*)sudo\s+", r"\1", command.text)  # sudo asks for a password
    text = TORCHRUN.sub("python train.py", text)  # one process composes what each of torchrun's would
    argv = shell_argv(Command(command.where, text))
    script = argv[1] if argv[0] == "python" else argv[0]
    if script != "train.py":
        text += " --dry-run"
    elif "-m" in argv or "--multirun" in argv:  # Hydra cannot --cfg a sweep: its first job
        text = "python train.py " + " ".join(f"'{a}'" for a in one_job(argv[2:])) + " --cfg job"
    else:
        text += " --cfg job"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    return subprocess.run(["bash", "-c", text], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_every_documented_command_runs_through_bash():
    commands = documented_commands()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(through_bash, commands))
    failed = [f"{c}\n  {r.stderr.strip()[-500:]}" for c, r in zip(commands, results) if r.returncode != 0]
    assert not failed, "\n".join(failed)
