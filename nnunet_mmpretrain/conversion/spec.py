"""The description of one case: which source file becomes which output file, and how."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_mmpretrain.conversion.paths import FILE_ENDING, display

#: channel order of every BraTS-like dataset we write (canonical modality names)
BRATS_CHANNELS = ("t1", "t1c", "t2", "flair")


@dataclass
class ImageSpec:
    """One output image. ``channel``: volume index in a 4D source. ``on_mismatch`` says what to do
    when the source is not on the case's reference grid: 'skip' the case, 'resample' it onto the
    reference grid (linear, by physical coordinates) or 'keep' it as it is (no check).
    ``register``: rigidly register the image onto the reference image (mutual information,
    :mod:`~nnunet_mmpretrain.conversion.registration`) and resample it there, whatever its grid;
    the settings (:class:`~nnunet_mmpretrain.conversion.registration.RegistrationSettings`) travel
    with the spec."""
    src: str
    dst: str
    channel: Optional[int] = None
    on_mismatch: str = "skip"
    what: str = ""  # human name for messages ("T1ce image")
    register: Optional[Any] = None


@dataclass
class LabelSpec:
    """The output label: ``mapping`` (release value -> our value) applied to ``src``, or a
    foreground ``mask`` ('otsu' | 'nonzero') computed from the image ``src`` (classification
    datasets without annotations)."""
    src: str
    dst: str
    mapping: Optional[Dict[int, int]] = None
    mask: Optional[str] = None
    dataset: str = ""
    hints: Dict[int, str] = field(default_factory=dict)  # unknown value -> explanation

    @classmethod
    def of(cls, src: str, dst: str, convention) -> "LabelSpec":
        """A label mapped with a :class:`~nnunet_mmpretrain.labels.LabelConvention`."""
        return cls(src=src, dst=dst, mapping=dict(convention.mapping), dataset=convention.dataset,
                   hints=dict(convention.hints))


@dataclass
class CaseSpec:
    case_id: str
    images: List[ImageSpec] = field(default_factory=list)
    label: Optional[LabelSpec] = None
    reference: int = 0  # index of the image whose grid the others (and the label) must match
    problem: Optional[str] = None  # found during discovery: the case is skipped with this reason
    info: Dict[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> List[str]:
        return [i.dst for i in self.images] + ([self.label.dst] if self.label else [])


def seg_image_dst(case_id: str, channel: int) -> str:
    return f"imagesTr/{case_id}_{channel:04d}{FILE_ENDING}"


def seg_label_dst(case_id: str) -> str:
    return f"labelsTr/{case_id}{FILE_ENDING}"


def corpus_image_dst(case_id: str, modality: str) -> str:
    return f"images/{case_id}_{modality}{FILE_ENDING}"


def missing_files_problem(files: Mapping[str, Tuple[Optional[str], str]]) -> Optional[str]:
    """``files``: what -> (found path or None, expected path). Reason naming the first missing one."""
    missing = [(w, exp) for w, (p, exp) in files.items() if p is None]
    if not missing:
        return None
    w, exp = missing[0]
    more = f" (and {len(missing) - 1} more missing file(s))" if len(missing) > 1 else ""
    return f"missing {w}: {exp}{more}"


def multimodal_seg_case(case_id: str, channels: Sequence[Tuple[str, Optional[str], str]],
                        label: Optional[Tuple[Optional[str], str]], mapping, dataset: str = "",
                        on_mismatch: str = "skip") -> CaseSpec:
    """The common 'one file per modality + a segmentation file' case.

    ``channels``: (modality, found path or None, expected path) in output channel order;
    ``label``: (found path or None, expected path) or None for no label; ``mapping``: a
    :class:`~nnunet_mmpretrain.labels.LabelConvention` or a plain {release value: our value}."""
    files = {f"{display(m)} image": (p, exp) for m, p, exp in channels}
    if label is not None:
        files["segmentation"] = label
    spec = CaseSpec(case_id=case_id, problem=missing_files_problem(files))
    spec.images = [ImageSpec(src=p or exp, dst=seg_image_dst(case_id, i), what=f"{display(m)} image",
                             on_mismatch="skip" if i == 0 else on_mismatch)
                   for i, (m, p, exp) in enumerate(channels)]
    if label is not None:
        src, dst = label[0] or label[1], seg_label_dst(case_id)
        spec.label = (LabelSpec.of(src, dst, mapping) if hasattr(mapping, "mapping") else
                      LabelSpec(src=src, dst=dst, mapping=mapping, dataset=dataset))
    return spec


def corpus_case_spec(case_id: str, images: Sequence[Tuple[str, str]], source: str, subject: str = "",
                     session: str = "", reference: Optional[str] = None,
                     problem: Optional[str] = None) -> CaseSpec:
    """``images``: (canonical modality, source path). With ``reference`` (a modality) the other
    images are resampled onto its grid; without, every image keeps its own grid."""
    mods = [m for m, _ in images]
    specs = []
    ref_idx = 0
    for i, (m, p) in enumerate(images):
        if reference is not None:
            pol = "skip" if m == reference else "resample"
            if m == reference:
                ref_idx = i
        else:
            pol = "keep"
        specs.append(ImageSpec(src=p, dst=corpus_image_dst(case_id, m), on_mismatch=pol,
                               what=f"{display(m)} image"))
    if reference is not None and reference not in mods and problem is None:
        problem = f"no {display(reference)} image to resample onto"
    return CaseSpec(case_id=case_id, images=specs, reference=ref_idx, problem=problem,
                    info={"source": source, "subject": subject or case_id, "session": session,
                          "modalities": mods})
