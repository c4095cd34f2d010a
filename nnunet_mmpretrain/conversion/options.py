"""How a conversion runs, whatever the release (:class:`ConvertOptions`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class ConvertOptions:
    """How a conversion runs, whatever the release: hard links or copies, dry run, overwrite,
    worker processes, progress bar, and whether the summary is logged at the end."""
    link: bool = True
    dry_run: bool = False
    overwrite: bool = False
    num_processes: int = 1
    progress: bool = True
    print_summary: bool = True

    @classmethod
    def take(cls, base: Optional["ConvertOptions"], keywords: Dict[str, Any]) -> "ConvertOptions":
        """``base`` (or the defaults) with the option fields found in ``keywords`` (removed from it),
        so that ``convert(..., progress=False)`` and ``convert(..., options=ConvertOptions(progress=False))``
        are the same call."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: keywords.pop(k) for k in list(keywords) if k in names}
        return dataclasses.replace(base or cls(), **given)
