"""Choosing one visit per subject (csv-labels on longitudinal tables such as ADNIMERGE, where a
subject has one row per visit and one image folder per visit).

The rule (``visit``): ``None`` -- a subject with several rows, or several matching images, is
ambiguous and skipped with a reason; ``'first'`` / ``'last'`` -- the earliest / latest visit:
rows ordered by the visit column (visit codes ``sc`` < ``bl`` < ``m06`` < ``m12`` ..., dates,
numbers) or, without one, by their order in the table; images ordered by path with numbers
compared as numbers (ADNI folders are dates) when the table has one row for the id (with several
rows the pattern must name the visit, so that image and label come from the same visit);
any other value -- the row whose visit column holds exactly that value (``bl``, ``m24``). With
``{visit}`` or ``{COLUMN}`` in an image pattern the chosen row's values select the image (ADNI:
``{id}/MPRAGE/{EXAMDATE}_*/*/*.nii``).
"""
from __future__ import annotations

import re
from datetime import date
from typing import Dict, List, Optional, Sequence, Tuple

RULES = ("first", "last")
_CODE_RE = re.compile(r"(?:m|month)\s*(\d+)", re.IGNORECASE)
_BASELINE = {"sc": -2, "scmri": -2, "init": -1, "bl": 0, "baseline": 0}


def visit_key(value: str) -> Tuple:
    """Sort key for one visit value: visit codes (sc < bl < m06 < m12 < m120), ISO dates,
    numbers, else the text."""
    v = value.strip()
    if v.lower() in _BASELINE:
        return (0, _BASELINE[v.lower()], v)
    m = _CODE_RE.fullmatch(v)
    if m:
        return (0, int(m.group(1)), v)
    try:
        return (1, date.fromisoformat(v[:10]).toordinal(), v)
    except ValueError:
        pass
    try:
        return (2, float(v), v)
    except ValueError:
        return (3, 0, v)


def natural_key(path: str) -> List:
    """'a/2006-4-18/x10' < 'a/2006-11-2/x9': numbers compared as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def choose_row(rows: Sequence[Tuple[int, Dict[str, str]]], visit: Optional[str],
               visit_column: Optional[str], subject: str) -> Tuple[Optional[Tuple[int, Dict[str, str]]], Optional[str]]:
    """The (line, row) of ``subject`` the rule picks from its (line, row) pairs, or (None, reason)."""
    lines = ", ".join(str(n) for n, _ in rows[:5]) + (" ..." if len(rows) > 5 else "")
    if visit is None:
        if len(rows) == 1:
            return rows[0], None
        return None, (f"{len(rows)} rows for id {subject!r} (rows {lines}: several visits?): choose one with "
                      f"--visit first|last|VALUE (and --visit-column COLUMN)")
    if visit in RULES:
        ordered = sorted(rows, key=lambda nr: visit_key(nr[1].get(visit_column, ""))) if visit_column else list(rows)
        return (ordered[0] if visit == "first" else ordered[-1]), None
    hits = [nr for nr in rows if nr[1].get(visit_column or "", "").strip() == visit]
    if not hits:
        seen = sorted({r.get(visit_column or "", "") for _, r in rows}, key=visit_key)
        return None, f"no row with {visit_column} = {visit!r} for id {subject!r} (its visits: {', '.join(seen)})"
    if len(hits) > 1:
        return None, f"{len(hits)} rows with {visit_column} = {visit!r} for id {subject!r} (rows {lines})"
    return hits[0], None


def choose_image(hits: Sequence[str], visit: Optional[str], pattern_names_visit: bool,
                 where: str, several_rows: bool = False) -> Tuple[Optional[str], Optional[str]]:
    """The image the rule picks among the files a pattern matched, or (None, reason). With
    several rows (visits) for the id the image must come from a pattern naming the visit: path
    order cannot tell which image belongs to the chosen row."""
    if not hits:
        return None, f"no image matches {where}"
    if len(hits) == 1:
        return hits[0], None
    if several_rows and not pattern_names_visit:
        return None, (f"{len(hits)} images match {where} and the table has several visits for this id: name "
                      f"the visit in --pattern ({{visit}} or a column such as {{EXAMDATE}}) so that the image "
                      f"belongs to the chosen row")
    if visit in RULES:
        ordered = sorted(hits, key=natural_key)
        return (ordered[0] if visit == "first" else ordered[-1]), None
    if visit is None:
        fix = "choose one with --visit first|last, or name the visit in --pattern ({visit}, {EXAMDATE})"
    elif pattern_names_visit:
        fix = "the pattern still matches several files of this visit: make it narrower"
    else:
        fix = "put {visit} or a column such as {EXAMDATE} in --pattern where the visit appears in the path"
    return None, f"{len(hits)} images match {where} (ambiguous: {fix}): {', '.join(hits[:3])}"
