"""The documentation site: its reference pages are what the code gives, and it builds with --strict.

The reference pages (``docs/reference/config.md``, ``tags.md``) are written by
``scripts/make_reference.py``; the tutorials' numbers come from ``scripts/make_docs_figures.py``
through ``docs/snippets/numbers.json`` (``mkdocs_hooks.py`` fills them in)."""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout

from conftest import ROOT


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_reference_is_current():
    """If this fails: python scripts/make_reference.py, and commit the pages it writes."""
    make_reference = script("make_reference")
    with redirect_stderr(io.StringIO()) as err:
        assert make_reference.main(["--check"]) == 0, err.getvalue()


def test_the_reference_has_every_key_and_tag(tmp_path):
    """Every schema key, every registered signal and every tag builder of the code is on a page: the
    pages follow the code, whatever it adds."""
    from experiments import config
    from experiments.telemetry import tags
    from experiments.telemetry.signals import SIGNALS

    make_reference = script("make_reference")
    pages = make_reference.pages()
    page, tag_page = pages[make_reference.PAGES["config"]], pages[make_reference.PAGES["tags"]]
    schemas = {"model.": config.ModelConfig, "init.": config.InitConfig, "init.rules[i].": config.InitRule,
               "trainer.": config.TrainerConfig}
    schemas.update({"data.": c for c in config.data_schemas().values()})
    for prefix, cls in schemas.items():
        for f in dataclasses.fields(cls):
            assert f"| `{prefix}{f.name}` |" in page, f"{prefix}{f.name}"
    assert all(f"`telemetry.{name}.enabled`" in page for name in SIGNALS)
    for group in ("model", "init", "data", "experiment"):
        for option in (ROOT / "conf" / group).glob("*.yaml"):
            assert f"| `{option.stem}` |" in page, f"{group}={option.stem}"
    assert "| `tied/<param>/use/<use>/<stat>` | `tags.use_stat(param, use, stat)` |" in tag_page
    assert f"| `{tags.LOSS_TRAIN}` | `tags.LOSS_TRAIN` |" in tag_page
    # a comment beside a field in the code is its description
    assert "| `trainer.clip_grad_norm` | `Optional[float]` | `null` | clip the total gradient norm" in page


def test_every_number_a_page_quotes_is_in_the_figure_scripts_output():
    numbers = json.loads((ROOT / "docs" / "snippets" / "numbers.json").read_text())
    sys.path.insert(0, str(ROOT))
    try:
        from mkdocs_hooks import PLACEHOLDER, value
    finally:
        sys.path.remove(str(ROOT))
    quoted = [(p, m.group(1)) for p in (ROOT / "docs").rglob("*.md") for m in PLACEHOLDER.finditer(p.read_text())]
    assert len(quoted) > 50
    for path, key in quoted:
        assert isinstance(value(numbers, key), (int, float)), f"{path.relative_to(ROOT)}: {key}"
    # the prose of a tutorial types no measured number: a decimal number in it is a setting, one that the
    # configs (conf/) or the page's own commands hold
    decimal = r"(?<![\w.])\d+\.\d+(?![\w.])"
    settings = {n for p in (ROOT / "conf").rglob("*.yaml") for n in re.findall(decimal, p.read_text())}
    for path in (ROOT / "docs" / "tutorials").glob("*.md"):
        text = path.read_text()
        code = re.findall(r"```.*?```|`[^`]*`", text, flags=re.S)
        allowed = settings | {n for c in code for n in re.findall(decimal, c)}
        prose = re.sub(r"```.*?```|`[^`]*`|\{\{[^}]*\}\}|\(\.\./[^)]*\)", "", text, flags=re.S)
        typed = set(re.findall(decimal, prose)) - allowed
        assert not typed, f"{path.relative_to(ROOT)} types {typed}: take them from numbers.json"


def test_the_site_builds_strict(tmp_path):
    """mkdocs build --strict: every link, anchor, snippet and quoted number resolves."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    page = (tmp_path / "site" / "tutorials" / "weight-tying" / "index.html").read_text()
    numbers = json.loads((ROOT / "docs" / "snippets" / "numbers.json").read_text())
    assert f"{numbers['weight_tying']['tied']['ratio_step1']:.1f}×" in page and "{{" not in page
    assert "weight_tying_uses.png" in page


def test_the_layout_page_names_every_module():
    """docs/reference/layout.md draws the layers of tests/test_package_structure.py: every module of
    src/ is named in its picture (a new module goes into LAYERS and onto that page)."""
    from test_package_structure import layer_of, modules

    page = (ROOT / "docs" / "reference" / "layout.md").read_text()
    text = page.split("```text", 1)[1].split("```", 1)[0]  # the picture of the layers
    missing = []
    for name in modules():
        layer_of(name)  # in a layer
        last = name.rpartition(".")[2]
        if not re.search(rf"(?<![\w]){re.escape(last)}(?![\w])", text):
            missing.append(name)
    assert not missing, f"not on docs/reference/layout.md: {missing}"


def test_the_readme_quotes_current_numbers():
    """The README cannot fill in numbers.json's values as the site does: the few it quotes are checked here."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    albert = json.loads((ROOT / "docs" / "snippets" / "numbers.json").read_text())["albert"]["depth4"]
    assert f"query gradient is 1/{1 / albert['query']['first_over_last_step1']:.0f} of the last depth's" in readme
    assert f"it reads inputs {1 / albert['input_std_step1']:.0f}× smaller" in readme
