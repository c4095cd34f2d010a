"""nnU-Net raw datasets: dataset.json, classes.csv, patients.json and patient-grouped folds
(:mod:`nnunet_mmpretrain.subjects`), :func:`convert_segmentation`, and nnU-Net's own integrity
check."""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from nnunet_mmpretrain import subjects
from nnunet_mmpretrain.conversion.execute import run_cases
from nnunet_mmpretrain.conversion.options import ConvertOptions
from nnunet_mmpretrain.conversion.paths import FILE_ENDING
from nnunet_mmpretrain.conversion.spec import CaseSpec
from nnunet_mmpretrain.conversion.staging import Staging, refuse_release_inside
from nnunet_mmpretrain.conversion.summary import ConversionError, ConversionSummary
from nnunet_mmpretrain.io_utils import atomic_write_json, atomic_write_text


@dataclass
class DatasetInfo:
    """dataset.json content besides the counts."""
    channel_names: Sequence[str]
    labels: Dict[str, Any]
    regions_class_order: Optional[List[int]] = None
    description: str = ""
    reference: str = ""
    licence: str = "see the release's licence"
    extra: Dict[str, Any] = field(default_factory=dict)


def prepare_dataset_folder(folder: str, overwrite: bool, dry_run: bool, summary: ConversionSummary) -> None:
    """Announce an ``--overwrite`` of a dry run. Nothing is deleted here: a real overwrite builds
    the new dataset beside the old one (:class:`~nnunet_mmpretrain.conversion.staging.Staging`)."""
    if overwrite and os.path.isdir(folder) and dry_run:
        summary.notes.append(f"--overwrite: would replace {folder} (built beside it, swapped in when "
                             f"complete) and convert every case again.")


def write_dataset_json(folder: str, info: DatasetInfo, num_training: int, name: str) -> str:
    dj: Dict[str, Any] = {
        "channel_names": {str(i): n for i, n in enumerate(info.channel_names)},
        "labels": info.labels,
        "numTraining": int(num_training),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": info.description,
        "reference": info.reference,
        "licence": info.licence,
    }
    if info.regions_class_order is not None:
        dj["regions_class_order"] = list(info.regions_class_order)
    dj.update(info.extra)
    p = os.path.join(folder, "dataset.json")
    atomic_write_json(dj, p)
    return p


def write_csv(path: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    atomic_write_text(buf.getvalue(), path)


def convert_segmentation(kind: str, specs: Sequence[CaseSpec], folder: str, info: DatasetInfo, *,
                         options: ConvertOptions,
                         classes: Optional[Tuple[Sequence[str], Callable[[CaseSpec], Sequence[Any]]]] = None
                         ) -> ConversionSummary:
    """Write an nnU-Net raw dataset (imagesTr, labelsTr, dataset.json) from ``specs`` as
    ``options`` say (:class:`~nnunet_mmpretrain.conversion.options.ConvertOptions`); the caller
    reports the returned summary (:func:`~nnunet_mmpretrain.conversion.release.run_release`).

    ``classes``: optional (csv header, row function) for a ``classes.csv`` listing the finished
    cases (classification datasets)."""
    summary = ConversionSummary(kind=kind, output=folder, dry_run=options.dry_run)
    if not specs:
        raise ConversionError(f"no {kind} cases found.")
    refuse_release_inside(folder, specs)
    prepare_dataset_folder(folder, options.overwrite, options.dry_run, summary)
    stage = Staging(folder, options.overwrite, options.dry_run)
    try:
        finished = run_cases(specs, stage.build, summary, options, desc=os.path.basename(folder))
        if not options.dry_run:
            if finished:
                _note_stale_cases(stage.build, {s.case_id for s in finished}, summary)
                name = os.path.basename(folder).split("_", 1)[1]
                write_dataset_json(stage.build, info, len(finished), name)
                if classes is not None:
                    header, row = classes
                    write_csv(os.path.join(stage.build, "classes.csv"), header, (row(s) for s in finished))
                patients = {s.case_id: {"patient": s.info["patient"], "timepoint": s.info.get("timepoint", "")}
                            for s in finished if s.info.get("patient")}
                grouped = subjects.write_patient_files(stage.build, patients) if patients else None
                stage.commit()
                if grouped:
                    summary.notes.append(_place_splits(folder, patients))
            else:
                summary.notes.append("no case could be converted: dataset.json was not written"
                                     + ("; the previous dataset is unchanged." if stage.staged else "."))
                stage.discard()
    except BaseException as e:
        raise stage.fail(e) from None
    return summary


def _place_splits(folder: str, patients: Dict[str, Dict[str, str]]) -> str:
    """Put the patient-grouped folds where plain nnU-Net reads them when the dataset lies in
    ``$nnUNet_raw`` and ``$nnUNet_preprocessed`` is set; otherwise say how (one line)."""
    n_pat = len({v["patient"] for v in patients.values()})
    head = (f"{len(patients)} case(s) of {n_pat} patient(s): patient-grouped folds in "
            f"{os.path.join(folder, subjects.SPLITS_FILE)}")
    raw, pre = os.environ.get("nnUNet_raw"), os.environ.get("nnUNet_preprocessed")
    target = os.path.join(pre, os.path.basename(folder)) if pre else None
    if target and raw and os.path.realpath(os.path.dirname(folder)) == os.path.realpath(raw):
        try:
            return f"{head}; {subjects.place_splits(folder, target)}"
        except OSError as e:
            return f"{head}; could not copy them to {target} ({e.strerror}): copy the file there before nnUNetv2_train"
    where = target or "$nnUNet_preprocessed/" + os.path.basename(folder)
    return (f"{head}; before nnUNetv2_train: mkdir -p {where} && cp {os.path.join(folder, subjects.SPLITS_FILE)} "
            f"{where}/ (nnU-Net's own folds would split patients)")


def _note_stale_cases(folder: str, expected: set, summary: ConversionSummary) -> None:
    d = os.path.join(folder, "imagesTr")
    if not os.path.isdir(d):
        return
    found = {f[: -len(FILE_ENDING) - 5] for f in os.listdir(d) if f.endswith(FILE_ENDING)}
    stale = sorted(found - expected)
    if stale:
        summary.notes.append(f"imagesTr holds {len(stale)} case(s) this run did not produce (e.g. "
                             f"{stale[0]}): numTraining will not match; re-run with --overwrite.")


def verify_nnunet_dataset(folder: str, num_processes: int = 1) -> None:
    """nnU-Net's own ``verify_dataset_integrity`` on a converted dataset (raises on problems)."""
    import nnunetv2.experiment_planning.verify_dataset_integrity as vdi
    vdi.verify_dataset_integrity(folder, num_processes=num_processes)
