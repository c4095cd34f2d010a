"""Helpers shared by the ``scripts/bench_*.py`` benchmarks (not a benchmark itself).

Machine description (cores, load average), a plain-text table printer and the JSON result
writer. The benchmark scripts import it as ``bench_common`` (``scripts/`` is on ``sys.path`` when
a script there is run as ``python scripts/bench_X.py``).
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT_DIR = os.path.join(REPO, "bench_output")


def load_average() -> List[float]:
    """1, 5 and 15 minute load averages (what ``uptime`` prints)."""
    return [round(v, 2) for v in os.getloadavg()]


def machine_info() -> Dict:
    """Cores, load, Python and library versions; call it at the start of a run."""
    info = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "load_average_start": load_average()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:  # pragma: no cover
        pass
    return info


def print_table(rows: Sequence[Sequence], headers: Sequence[str], title: Optional[str] = None) -> str:
    """Markdown-style table (printed and returned) so it can be pasted into BENCHMARKS.md."""
    cells = [[str(h) for h in headers]] + [[_fmt(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    out = ([f"\n{title}"] if title else []) + [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    text = "\n".join(out)
    print(text, flush=True)
    return text


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def write_result(out: Optional[str], name: str, result: Dict) -> str:
    """Write ``result`` (plus the load average at the end) as JSON; default
    ``bench_output/<name>.json`` in the repository. Returns the path."""
    path = out or os.path.join(DEFAULT_OUT_DIR, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    result.setdefault("machine", {})["load_average_end"] = load_average()
    result["argv"] = sys.argv
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nresult written to {path}; load average at start {result['machine'].get('load_average_start')}, "
          f"end {result['machine']['load_average_end']}", flush=True)
    return path
