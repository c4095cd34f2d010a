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
    CORPUS, CaseSpec, Plan, Release, Setting, corpus_case_spec, find_dirs, visible)

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
    """One corpus case per exam folder (``*_nifti``)."""
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


def plan(root: str, bias_corrected: bool = False, case_prefix: str = "") -> Plan:
    """Discovery and manifest source of UCSF-PDGM; notes how many follow-up exams were grouped."""
    specs = build_specs(root, bias_corrected, case_prefix)
    fu = [s for s in specs if s.info.get("session") not in ("", BASELINE)]
    notes = [f"{len(fu)} follow-up exam(s) of {len({s.info['subject'] for s in fu})} patient(s) grouped under "
             f"their patient (manifest subject) with the exam as session"] if fu else []
    return Plan(specs, notes=notes,
                empty=f"no UCSF-PDGM case folders under {root}: expected UCSF-PDGM-XXXX_nifti/ folders holding "
                      f"UCSF-PDGM-XXXX_{{T1,T1c,T2,FLAIR,DWI,ADC}}.nii.gz.",
                sources={"ucsf_pdgm": {"description": "UCSF-PDGM diffuse glioma: T1, T1c, T2, FLAIR, DWI, ADC"
                                       + (" (bias-corrected versions)" if bias_corrected else ""), "release": root}})


RELEASE = Release(
    kind="corpus-ucsf-pdgm", title="UCSF-PDGM corpus", output=CORPUS, plan=plan, default_id=552,
    default_name="UCSFPDGMCorpus", root_word="UCSF-PDGM",
    help="pretraining corpus from UCSF-PDGM (T1, T1c, T2, FLAIR, DWI, ADC; follow-up exams grouped under "
         "their patient)",
    settings=(Setting("bias_corrected", False, ("--bias-corrected",), "use the *_bias.nii.gz versions where present",
                      cli={"action": "store_true"}),))
convert = RELEASE.convert
