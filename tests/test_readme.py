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


def test_the_readme_commands_parse():
    """Every ``mmrec-fast ...`` line of README's shell blocks, and every ``torchrun ... -m mmrec_fast ...`` one, is
    accepted by the command line's parser (no stale flag or model name)."""
    import shlex

    from mmrec_fast.cli import build_parser

    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["mmrec-fast"]:
                    commands.append(words[1:])
                elif words[:1] == ["torchrun"] and "mmrec_fast" in words:
                    commands.append(words[words.index("mmrec_fast") + 1 :])
    assert len(commands) >= 8
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # exits (SystemExit 2) on an unknown option or choice
