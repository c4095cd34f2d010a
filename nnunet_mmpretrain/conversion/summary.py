"""What a conversion did (:class:`ConversionSummary`) and the two errors converters raise."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List

ALREADY_DONE = "already converted (all its output files exist)"


class ConversionError(Exception):
    """A problem with the whole conversion (bad arguments, missing release, no cases). The CLI
    prints its message as one line."""


class CaseSkip(Exception):
    """A problem with one case; the case is skipped and the message becomes its reason."""


@dataclass
class ConversionSummary:
    """What a conversion did. ``skipped`` maps case id -> reason and includes the cases that were
    already finished (reason :data:`ALREADY_DONE`); ``skipped_files`` lists source files that were
    ignored (unknown modality, image without a CSV row, ...); ``case_info`` holds per-case
    measurements of this run (``registration``: metrics per registered image)."""
    kind: str
    output: str
    dry_run: bool = False
    converted: List[str] = field(default_factory=list)
    skipped: Dict[str, str] = field(default_factory=dict)
    skipped_files: Dict[str, str] = field(default_factory=dict)
    files: Dict[str, int] = field(default_factory=lambda: {
        "linked": 0, "copied": 0, "link_fallback_copies": 0, "rewritten": 0, "resampled": 0,
        "registered": 0, "labels": 0})
    notes: List[str] = field(default_factory=list)
    case_info: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    @property
    def already_done(self) -> List[str]:
        return [c for c, r in self.skipped.items() if r == ALREADY_DONE]

    @property
    def problems(self) -> Dict[str, str]:
        """Skipped cases other than the already finished ones."""
        return {c: r for c, r in self.skipped.items() if r != ALREADY_DONE}

    @property
    def finished(self) -> int:
        """Cases present in the output after this run (converted now or before)."""
        return len(self.converted) + len(self.already_done)

    def report(self, max_lines: int = 25) -> str:
        verb = "would convert" if self.dry_run else "converted"
        lines = [f"{self.kind} -> {self.output}" + ("  [dry run: nothing written]" if self.dry_run else ""),
                 f"  {verb} {len(self.converted)} case(s), skipped {len(self.already_done)} already "
                 f"converted, skipped {len(self.problems)} with problems"]
        if not self.dry_run and any(self.files.values()):
            f = self.files
            lines.append(f"  files: {f['linked']} hard-linked, {f['copied']} copied"
                         + (f" ({f['link_fallback_copies']} because hard links were not possible)"
                            if f["link_fallback_copies"] else "")
                         + f", {f['rewritten']} rewritten, {f['resampled']} resampled, "
                         + (f"{f['registered']} registered, " if f.get("registered") else "")
                         + f"{f['labels']} label files written")
        lines += self._registration_lines()
        for title, items in (("skipped", self.problems), ("skipped file", self.skipped_files)):
            for i, (k, r) in enumerate(sorted(items.items())):
                if i == max_lines:
                    lines.append(f"  ... and {len(items) - max_lines} more {title} entries")
                    break
                lines.append(f"  {title} {k}: {r}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _registration_lines(self) -> List[str]:
        regs = [(c, w, r) for c, i in sorted(self.case_info.items()) for w, r in i.get("registration", {}).items()
                if c in self.converted]
        if not regs:
            return []
        c, w, worst = min(regs, key=lambda x: x[2]["coverage_final"])
        gain = sorted(r["metric_initial"] - r["metric_final"] for _, _, r in regs)
        return [f"  registration: {len(regs)} image(s) registered; Mattes MI improved by "
                f"{gain[len(gain) // 2]:.3f} (median); lowest foreground coverage "
                f"{worst['coverage_final']:.0%} ({w} of {c})"]


def report_summary(summary: ConversionSummary) -> None:
    """Log the summary's report (INFO, logger ``nnunet_mmpretrain.conversion``); the command line
    shows it on stdout."""
    logging.getLogger("nnunet_mmpretrain.conversion").info(summary.report())
