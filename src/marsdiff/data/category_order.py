"""The natural order of category names, for tables and figures (not alphabetical: s10 after s9,
dark before bright)."""

from __future__ import annotations

import re

from marsdiff.data.categories import CONTRAST_NAMES, LIGHTING_NAMES


def category_sort_key(name: str) -> tuple:
    """Size classes small to large (s1_, s2_, ...), numbered lighting / contrast bins by number,
    named ones dark to bright and low to high, anything else alphabetically."""
    text = str(name)
    match = re.match(r"^[slc](\d+)(?:_|$)", text)
    if match:
        return (0, int(match.group(1)), text)
    for names in (LIGHTING_NAMES[3], CONTRAST_NAMES[3]):
        if text in names:
            return (1, names.index(text), text)
    return (2, 0, text)
