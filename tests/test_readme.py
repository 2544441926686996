"""The README's options table is generated from the dataclasses; it must not drift from them."""

import re
from pathlib import Path

from qrl.config.arguments import RL_SECTIONS, options_markdown

README = Path(__file__).resolve().parents[1] / "README.md"


def test_options_table_matches_the_dataclasses():
    text = README.read_text()
    table = re.search(r"<!-- options:start.*?-->\n(.*?)\n<!-- options:end -->", text, re.S).group(1)
    assert table == options_markdown(RL_SECTIONS), "regenerate with: python -m qrl.config.arguments"


def test_readme_stays_within_500_lines():
    assert len(README.read_text().splitlines()) <= 500, "the README is the short guide: move details to docs/"
