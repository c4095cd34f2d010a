"""UCSF-PDGM (TCIA) -> pretraining corpus.

Release layout (``UCSF-PDGM-v3/``), one folder per case anywhere up to three levels below
``RELEASE_ROOT``::

    UCSF-PDGM-0004_nifti/UCSF-PDGM-0004_{T1,T1c,T2,FLAIR,DWI,ADC}.nii.gz
                         (+ *_bias.nii.gz bias-corrected versions, SWI, ASL, DTI_eddy_*, segmentations)

    UCSF-PDGM-0429_FU003d_nifti/UCSF-PDGM-0429_FU003d_{T1,...}.nii.gz   (v3+: a few follow-up exams)

Files are matched by their ``_<MOD>.nii.gz`` ending whatever the prefix; ``bias_corrected`` takes
the ``_<MOD>_bias.nii.gz`` version where the release has one. The case id is the folder name
without ``_nifti`` (one case per exam). Follow-up exams (``_FU<days>d`` in the id) are grouped
under their patient: the manifest's ``subject`` is the patient id (``UCSF-PDGM-0429``) for the
first exam and its follow-ups alike, and ``session`` the exam (``baseline``, ``FU003d``), so that a
subject-level split keeps all exams of a patient on one side. Other files (SWI, ASL, DTI,
segmentations) are not used.
"""
from __future__ import annotations

import glob
import os
import re
from typing import List, Optional

from nnunet_mmpretrain.conversion.common import (
    CaseSpec, ConversionError, ConversionSummary, convert_corpus, corpus_case_spec, dataset_folder,
    find_dirs, report_summary, require_root, visible)

KIND = "UCSF-PDGM corpus"
DEFAULT_ID, DEFAULT_NAME = 552, "UCSFPDGMCorpus"
CASE_RE = re.compile(r".+_nifti")
#: exam id -> patient (subject) and follow-up session
FOLLOW_UP_RE = re.compile(r"(?P<subject>.+?)_(?P<session>FU\d+d)")
BASELINE = "baseline"
#: canonical modality -> release suffix
SUFFIX = {"flair": "FLAIR", "t1": "T1", "t1c": "T1c", "t2": "T2", "dwi": "DWI", "adc": "ADC"}


def _match(folder: str, suffix: str) -> Optional[str]:
    hits = sorted(p for p in glob.glob(os.path.join(folder, f"*_{suffix}.nii*"))
                  if visible(os.path.basename(p)) and re.search(rf"_{suffix}\.nii(\.gz)?$", p))
    return hits[0] if hits else None


def build_specs(root: str, bias_corrected: bool = False, case_prefix: str = "") -> List[CaseSpec]:
    specs = []
    for d in find_dirs(root, CASE_RE, max_depth=3):
        cid = os.path.basename(d)[: -len("_nifti")]
        images = []
        for m, suf in SUFFIX.items():
            p = (_match(d, f"{suf}_bias") if bias_corrected else None) or _match(d, suf)
            if p:
                images.append((m, p))
        problem = None if images else f"none of {', '.join(SUFFIX.values())} found in {d}"
        subject, session = exam_of(cid)
        specs.append(corpus_case_spec(case_prefix + cid, images, "ucsf_pdgm", subject=subject, session=session,
                                      problem=problem))
    return specs


def exam_of(case_id: str):
    """(subject, session) of an exam id: ``UCSF-PDGM-0429_FU003d`` -> (``UCSF-PDGM-0429``,
    ``FU003d``); a first exam is its own subject with session ``baseline``."""
    m = FOLLOW_UP_RE.fullmatch(case_id)
    return (m.group("subject"), m.group("session")) if m else (case_id, BASELINE)


def convert(release_root: str, out_dir: Optional[str] = None, dataset_id: int = DEFAULT_ID,
            name: str = DEFAULT_NAME, *, bias_corrected: bool = False, case_prefix: str = "",
            atlas_registered="auto", link: bool = True, dry_run: bool = False, overwrite: bool = False,
            num_processes: int = 1, progress: bool = True, print_summary: bool = True) -> ConversionSummary:
    root = require_root(release_root, "UCSF-PDGM")
    folder = dataset_folder(out_dir, dataset_id, name)
    specs = build_specs(root, bias_corrected, case_prefix)
    if not specs:
        raise ConversionError(f"no UCSF-PDGM case folders under {root}: expected UCSF-PDGM-XXXX_nifti/ "
                              f"folders holding UCSF-PDGM-XXXX_{{T1,T1c,T2,FLAIR,DWI,ADC}}.nii.gz.")
    sources = {"ucsf_pdgm": {"description": "UCSF-PDGM diffuse glioma: T1, T1c, T2, FLAIR, DWI, ADC"
                             + (" (bias-corrected versions)" if bias_corrected else ""), "release": root}}
    summary = convert_corpus(KIND, specs, folder, sources, atlas_registered=atlas_registered, link=link,
                             dry_run=dry_run, overwrite=overwrite, num_processes=num_processes,
                             progress=progress, print_summary=False)
    fu = [s for s in specs if s.info.get("session") not in ("", BASELINE)]
    if fu:
        summary.notes.append(f"{len(fu)} follow-up exam(s) of {len({s.info['subject'] for s in fu})} patient(s) "
                             f"grouped under their patient (manifest subject) with the exam as session")
    if print_summary:
        report_summary(summary)
    return summary
