"""``docs/writing-plugins.md`` cannot rot: every code block in it is a region of the example plugin.

A block is included as::

    <!-- snippet: examples/acme-plugin/src/pretrain_acme/heads.py#head -->
    ```python
    ...exactly the lines between `# [snippet head]` and `# [/snippet]` in that file...
    ```

After editing the example plugin, refresh the doc with
``python tests/test_writing_plugins_doc.py`` (rewrites the blocks in place).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-plugins.md"
EXAMPLE = ROOT / "examples" / "acme-plugin"

_BLOCK = re.compile(r"<!-- snippet: (?P<path>[^#\s]+)#(?P<name>[\w-]+) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```",
                    re.DOTALL)
_REGION = re.compile(r"^[ \t]*# \[snippet (?P<name>[\w-]+)\][ \t]*\n(?P<body>.*?)^[ \t]*# \[/snippet\][ \t]*$",
                     re.DOTALL | re.MULTILINE)


def regions(path: Path) -> dict[str, str]:
    """Snippet regions of one source file, by name (text between the marker lines)."""
    found: dict[str, str] = {}
    for match in _REGION.finditer(path.read_text(encoding="utf-8")):
        assert match["name"] not in found, f"{path}: snippet {match['name']!r} defined twice"
        found[match["name"]] = match["body"]
    return found


def render(doc: str) -> str:
    """The doc with every snippet block replaced by the current source region."""

    def fill(match: re.Match[str]) -> str:
        body = regions(ROOT / match["path"])[match["name"]]
        return f"<!-- snippet: {match['path']}#{match['name']} -->\n```{match['lang']}\n{body}```"

    return _BLOCK.sub(fill, doc)


def doc_blocks() -> list[re.Match[str]]:
    return list(_BLOCK.finditer(DOC.read_text(encoding="utf-8")))


def test_doc_has_the_guide_steps():
    names = {m["name"] for m in doc_blocks()}
    assert {"pyproject", "backbone", "neck", "head", "loss", "algorithm", "spec", "kit"} <= names


@pytest.mark.parametrize("block", doc_blocks(), ids=lambda m: f"{Path(m['path']).name}#{m['name']}")
def test_snippet_matches_the_example_source(block):
    path = ROOT / block["path"]
    assert path.is_file(), f"{block['path']} does not exist"
    source = regions(path)
    assert block["name"] in source, f"{block['path']} has no `# [snippet {block['name']}]` region"
    assert block["body"] == source[block["name"]], (
        f"docs/writing-plugins.md's snippet {block['name']!r} differs from {block['path']}; "
        "run `python tests/test_writing_plugins_doc.py` to refresh the doc"
    )


def test_every_example_region_is_shown_in_the_doc():
    shown = {(m["path"], m["name"]) for m in doc_blocks()}
    for path in sorted(p for p in EXAMPLE.rglob("*") if p.suffix in (".py", ".toml") and p.is_file()):
        if "build" in path.parts or any(part.endswith(".egg-info") for part in path.parts):
            continue
        rel = path.relative_to(ROOT).as_posix()
        for name in regions(path):
            assert (rel, name) in shown, f"{rel}#{name} is marked as a snippet but the doc does not include it"


if __name__ == "__main__":
    DOC.write_text(render(DOC.read_text(encoding="utf-8")), encoding="utf-8")
    sys.stdout.write(f"refreshed {len(doc_blocks())} snippets in {DOC.relative_to(ROOT)}\n")
