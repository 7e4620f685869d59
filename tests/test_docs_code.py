"""The code blocks of docs/faq.md and docs/attacks.md run, in order, in one namespace per page (each
block's asserts are the checks)."""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _run_blocks(page: Path, min_blocks: int) -> dict:
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), re.S)
    assert len(blocks) >= min_blocks
    namespace: dict = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{page.name} block {index}", "exec"), namespace)
    return namespace


def test_every_faq_code_block_runs_and_its_checks_hold(capsys):
    namespace = _run_blocks(DOCS / "faq.md", 5)
    assert namespace["full"].rank >= 1


def test_every_attacks_code_block_runs_and_the_attack_hurts_the_victim(capsys):
    namespace = _run_blocks(DOCS / "attacks.md", 3)
    assert float(namespace["attacked"].mean()) < float(namespace["clean"].mean())
