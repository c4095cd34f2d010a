"""The unlabelled pretraining corpus manifest.

A corpus is a folder with a ``manifest.json``::

    {
      "format": "nnunet_mmpretrain.corpus/1",
      "name": "PhantomCorpus",
      "atlas_registered": true,            # all cases on one atlas grid (templates use positions)
      "sources": {"phantom_brats": {"description": "..."}, ...},
      "cases": [
        {"case_id": "brats_0000", "subject": "brats_0000", "session": "ses-1",
         "source": "phantom_brats",
         "images": {"t1": "images/brats_0000_t1.nii.gz", "t2": "..."}},
        ...
      ]
    }

One case is one subject/session; ``images`` maps canonical modality names (see
:mod:`nnunet_mmpretrain.modalities`; aliases are normalised on reading) to image files, relative to
the manifest's folder or absolute. Cases may carry different modality sets.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List

from nnunet_mmpretrain import modalities as mod
from nnunet_mmpretrain.io_utils import atomic_write_json

FORMAT = "nnunet_mmpretrain.corpus/1"
MANIFEST_NAME = "manifest.json"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class ManifestError(ValueError):
    """The manifest itself is malformed (not an image problem)."""


def check_case_id(case_id: str, where: str = "") -> str:
    """Case ids become file names: letters, digits, '_', '.', '-' only, no '..', no separators."""
    if not isinstance(case_id, str) or not _ID_RE.match(case_id) or ".." in case_id:
        raise ManifestError(
            f"invalid case id {case_id!r}{' in ' + where if where else ''}: use letters, digits, "
            f"'_', '.' and '-' only (no path separators, no '..').")
    return case_id


@dataclass
class CorpusCase:
    case_id: str
    images: Dict[str, str]  # canonical modality -> path (as written: relative or absolute)
    subject: str = ""
    session: str = ""
    source: str = "default"

    @property
    def modalities(self) -> List[str]:
        return mod.sort_modalities(self.images)


@dataclass
class CorpusManifest:
    name: str
    cases: List[CorpusCase]
    sources: Dict[str, dict] = field(default_factory=dict)
    atlas_registered: bool = False
    root: str = "."  # folder the relative paths are resolved against

    def path(self, case: CorpusCase, modality: str) -> str:
        p = case.images[modality]
        return p if os.path.isabs(p) else os.path.join(self.root, p)

    @property
    def modalities(self) -> List[str]:
        """All modalities present in the corpus, in vocabulary order."""
        return mod.sort_modalities(m for c in self.cases for m in c.images)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "name": self.name, "atlas_registered": self.atlas_registered,
            "sources": self.sources,
            "cases": [{"case_id": c.case_id, "subject": c.subject or c.case_id,
                       "session": c.session, "source": c.source,
                       "images": {m: c.images[m] for m in c.modalities}} for c in self.cases],
        }

    def counts(self) -> dict:
        """Cases per source and scans per modality (for plans and reports)."""
        per_source: Dict[str, int] = {}
        per_mod: Dict[str, int] = {}
        for c in self.cases:
            per_source[c.source] = per_source.get(c.source, 0) + 1
            for m in c.images:
                per_mod[m] = per_mod.get(m, 0) + 1
        return {"cases": len(self.cases), "scans": sum(per_mod.values()),
                "cases_per_source": per_source, "scans_per_modality": per_mod}


#: keys a manifest (top level) and each of its cases may hold; anything else is refused (a typo
#: such as ``atlas_registerd`` would otherwise be ignored silently)
TOP_KEYS = ("format", "name", "description", "atlas_registered", "sources", "cases")
CASE_KEYS = ("case_id", "subject", "session", "source", "images")


def _unknown_keys(d: dict, known, what: str, where: str) -> None:
    extra = sorted(str(k) for k in d if k not in known)
    if extra:
        raise ManifestError(f"{where}: unknown key(s) {', '.join(map(repr, extra))} in {what}; "
                            f"allowed: {', '.join(known)}.")


def _text(value, what: str, where: str, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise ManifestError(f"{where}: {what} must be a string, got {type(value).__name__}.")
    return value


def parse_manifest(data: dict, root: str, where: str = "manifest") -> CorpusManifest:
    """Build a manifest from its JSON dict; structural errors raise ManifestError naming ``where``
    (unknown modality names raise :class:`~nnunet_mmpretrain.modalities.UnknownModalityError`)."""
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a JSON object at the top level.")
    _unknown_keys(data, TOP_KEYS, "the manifest", where)
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise ManifestError(f"{where}: unknown format {fmt!r}, expected {FORMAT!r}.")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise ManifestError(f"{where}: the manifest lists no cases ('cases' must be a non-empty "
                            f"list of {{case_id, images: {{modality: file}}}}).")
    sources = data.get("sources", {}) or {}
    if not isinstance(sources, dict):
        raise ManifestError(f"{where}: 'sources' must be an object {{name: {{description: ...}}}}.")
    if not isinstance(data.get("atlas_registered", False), bool):
        raise ManifestError(f"{where}: 'atlas_registered' must be true or false.")
    seen = set()
    files: Dict[str, tuple] = {}  # normalised path -> (case id, modality): the same scan twice?
    cases = []
    for i, rc in enumerate(raw_cases):
        if not isinstance(rc, dict) or "images" not in rc:
            raise ManifestError(f"{where}: case #{i} has no 'images' mapping.")
        cid = check_case_id(rc.get("case_id", ""), f"{where} case #{i}")
        _unknown_keys(rc, CASE_KEYS, f"case {cid!r}", where)
        if cid in seen:
            raise ManifestError(f"{where}: case id {cid!r} appears twice.")
        seen.add(cid)
        images: Dict[str, str] = {}
        if not isinstance(rc["images"], dict) or not rc["images"]:
            raise ManifestError(f"{where}: case {cid!r} lists no images.")
        for m, p in rc["images"].items():
            cm = mod.canonical(m, where=f"{where}, case {cid!r}")
            if cm in images:
                raise ManifestError(f"{where}: case {cid!r} lists modality {cm!r} twice "
                                    f"(aliases of one modality).")
            if not isinstance(p, str) or not p.strip():
                raise ManifestError(f"{where}: case {cid!r}, {cm}: the image must be a file path "
                                    f"(relative to the manifest's folder or absolute).")
            key = os.path.normcase(os.path.normpath(p if os.path.isabs(p) else os.path.join(root, p)))
            if key in files and files[key][0] != cid:
                other, om = files[key]
                raise ManifestError(f"{where}: {p} is listed by case {other!r} ({om}) and case {cid!r} "
                                    f"({cm}): the same scan under two case ids would be duplicated "
                                    f"data; remove one of the two.")
            files.setdefault(key, (cid, cm))
            images[cm] = p
        subject = _text(rc.get("subject"), f"case {cid!r} 'subject'", where) or cid
        session = _text(rc.get("session"), f"case {cid!r} 'session'", where)
        source = _text(rc.get("source"), f"case {cid!r} 'source'", where) or "default"
        cases.append(CorpusCase(case_id=cid, images=images, subject=subject, session=session, source=source))
    return CorpusManifest(name=_text(data.get("name"), "'name'", where, "corpus") or "corpus", cases=cases,
                          sources=sources,
                          atlas_registered=bool(data.get("atlas_registered", False)), root=root)


def load_manifest(path: str) -> CorpusManifest:
    """Read ``path`` (a manifest.json or the folder holding one)."""
    if os.path.isdir(path):
        path = os.path.join(path, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise ManifestError(f"no corpus manifest at {path}: create one (see "
                            f"nnunet_mmpretrain.corpus.manifest) or point to the corpus folder.")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ManifestError(f"{path} is nested too deeply to be a manifest.") from None
    return parse_manifest(data, root=os.path.dirname(os.path.abspath(path)), where=path)


def save_manifest(manifest: CorpusManifest, folder: str) -> str:
    """Write ``folder/manifest.json`` atomically; returns its path."""
    os.makedirs(folder, exist_ok=True)
    out = os.path.join(folder, MANIFEST_NAME)
    atomic_write_json(manifest.to_dict(), out)
    return out
