"""README.md's Python example runs as pasted."""

from __future__ import annotations

import re

from conftest import REPO


def test_the_readme_example_runs(capsys):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"^## Example\n\n```python\n(.*?)^```", text, flags=re.S | re.M)
    assert len(blocks) == 1, "README.md has one ## Example section with a python block"
    exec(compile(blocks[0], "README.md example", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out.split("\n")
    assert any("infonce" in line for line in printed), printed
