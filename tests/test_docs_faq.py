"""The code blocks of docs/faq.md run, in order, in one namespace (each block's asserts are the checks)."""

import re
from pathlib import Path

FAQ = Path(__file__).resolve().parents[1] / "docs" / "faq.md"


def test_every_faq_code_block_runs_and_its_checks_hold(capsys):
    blocks = re.findall(r"```python\n(.*?)```", FAQ.read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{FAQ.name} block {index}", "exec"), namespace)
    assert namespace["full"].rank >= 1
