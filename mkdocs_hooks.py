"""MkDocs hook: the numbers the pages quote, from the figure script's output (never typed by hand).

A page writes ``{{ weight_tying.tied.ratio_step1:.2f }}``: a path into ``docs/snippets/numbers.json``
(written by ``scripts/make_docs_figures.py`` from real runs) and an optional Python format. A path
that is not there fails the build, naming the page and the path.
"""

import json
import re
from pathlib import Path

from mkdocs.exceptions import PluginError

NUMBERS = Path(__file__).resolve().parent / "docs" / "snippets" / "numbers.json"
PLACEHOLDER = re.compile(r"\{\{\s*([\w.]+)\s*(?::([^}]*))?\}\}")


def value(numbers: dict, path: str):
    found = numbers
    for part in path.split("."):
        if not isinstance(found, dict) or part not in found:
            raise KeyError(path)
        found = found[part]
    return found


def on_page_markdown(markdown, page, config, files):
    numbers = json.loads(NUMBERS.read_text())

    def substitute(match):
        try:
            found = value(numbers, match.group(1))
        except KeyError:
            raise PluginError(f"{page.file.src_path}: {{{{ {match.group(1)} }}}} is not in {NUMBERS.name}; "
                              f"run python scripts/make_docs_figures.py") from None
        try:
            return format(found, (match.group(2) or "").strip())
        except (TypeError, ValueError) as error:
            raise PluginError(f"{page.file.src_path}: {match.group(0)}: {error}") from None

    return PLACEHOLDER.sub(substitute, markdown)
