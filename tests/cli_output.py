"""What the captioning commands write besides their own output: the one ``--dtype auto`` note on stderr,
printed where auto picks bf16 (CPUs with native bf16, GPUs) and nowhere else."""

from __future__ import annotations

import re

DTYPE_NOTE = re.compile(r"^dtype: \w+ \(--dtype auto on \w+\)$")


def without_dtype_note(text: str) -> str:
    """``text`` without the ``--dtype auto`` note line."""
    return "".join(line for line in text.splitlines(keepends=True) if not DTYPE_NOTE.match(line.rstrip("\r\n")))
