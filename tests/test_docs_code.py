"""Every ```python block of README.md and docs/*.md runs on its own.

Each block is one test case, id ``<page>:<n>`` (the n-th python block of the page, from 1), executed
in-process in a fresh namespace: a block gets nothing from the blocks before it, exactly as when a
reader copies it alone. The block's own asserts are its checks. Blocks that are not meant to run
(shell commands, configs, output listings) use another fence language (bash, yaml, text, ...).
"""

from __future__ import annotations

import linecache
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
LANGUAGES = {"python", "bash", "yaml", "text", "json", "toml"}
# Pages whose blocks train attack surrogates or run large gradient studies (over 10 s of CPU each);
# marked slow so that a quick subset (-m "not slow") can leave them out. They still run in `make test`.
SLOW_PAGES = {"attacks.md", "structure_gradients.md"}


def _blocks(page: Path) -> list[tuple[str, int, str]]:
    """``(language, first line of the body, body)`` of every fenced block of ``page``."""
    text = page.read_text()
    return [(m["lang"].strip(), text.count("\n", 0, m.start("body")) + 1, m["body"]) for m in FENCE.finditer(text)]


def _cases() -> list:
    cases = []
    for page in PAGES:
        python = [(line, body) for lang, line, body in _blocks(page) if lang == "python"]
        for number, (line, body) in enumerate(python, start=1):
            marks = [pytest.mark.slow] if page.name in SLOW_PAGES else []
            cases.append(pytest.param(page, line, body, id=f"{page.name}:{number}", marks=marks))
    return cases


@pytest.mark.parametrize(("page", "line", "code"), _cases())
def test_docs_python_block_runs_on_its_own(page, line, code):
    filename = f"{page.relative_to(ROOT)}, block at line {line}"
    # Line numbers in tracebacks are the page's own: pad the block down to where it starts.
    source = "\n" * (line - 1) + code
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"__name__": "__docs__"}
    exec(compile(source, filename, "exec"), namespace)


def test_docs_have_python_blocks_and_every_fence_names_its_language():
    pages_with_code = [page.name for page in PAGES if any(lang == "python" for lang, _, _ in _blocks(page))]
    expected = {"README.md", "faq.md", "attacks.md", "own_model.md", "training.md", "saliency.md",
                "distributed.md", "performance.md"}
    assert expected <= set(pages_with_code)
    unlabelled = [f"{page.name}:{line}" for page in PAGES for lang, line, _ in _blocks(page)
                  if lang not in LANGUAGES]
    assert not unlabelled, f"fenced blocks without a known language (python, bash, yaml, text, ...): {unlabelled}"


def test_docs_blocks_do_not_depend_on_local_data_paths():
    offending = [f"{page.name}:{line}" for page in PAGES for lang, line, body in _blocks(page)
                 if lang == "python" and ("JGRAD_DATA" in body or "../shared" in body)]
    assert not offending, f"python blocks must run on a fresh clone, without JGRAD_DATA: {offending}"
