"""Converting cases: one case checked completely then written (:func:`execute_case`), and many
cases with id checks, resuming and an optional process pool (:func:`run_cases`)."""
from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, Dict, Iterable, List, Sequence

from nnunet_mmpretrain.conversion.imageio import (
    _first_line, _sitk, check_complete, clear_partial, foreground_mask, image_grid, load_image, map_labels,
    place_file, resample_onto, write_image)
from nnunet_mmpretrain.conversion.options import ConvertOptions
from nnunet_mmpretrain.conversion.paths import FILE_ENDING, safe_join
from nnunet_mmpretrain.conversion.registration import register_rigid
from nnunet_mmpretrain.conversion.spec import CaseSpec
from nnunet_mmpretrain.conversion.summary import ALREADY_DONE, CaseSkip, ConversionSummary
from nnunet_mmpretrain.conversion.staging import estimate_bytes
from nnunet_mmpretrain.corpus.manifest import ManifestError, check_case_id
from nnunet_mmpretrain.io_utils import is_fatal_os_error

log = logging.getLogger(__name__)


@dataclass
class CaseResult:
    case_id: str
    ok: bool
    reason: str = ""
    counts: Dict[str, int] = field(default_factory=dict)
    info: Dict[str, Any] = field(default_factory=dict)  # e.g. registration metrics per image


#: failures of one case that must not end a long conversion (SimpleITK raises RuntimeError);
#: anything else is a bug and propagates. A full, read-only or forbidden output disk
#: (:func:`~nnunet_mmpretrain.io_utils.is_fatal_os_error`) ends the whole conversion.
CASE_ERRORS = (OSError, RuntimeError, MemoryError)


def _plan_images(spec: CaseSpec):
    """Headers only: per image (spec, channel, resample?, place the file as it is?)."""
    for src in dict.fromkeys([i.src for i in spec.images] + ([spec.label.src] if spec.label else [])):
        check_complete(src)  # truncated / corrupt gzip: SimpleITK would read zeros
    grids = [image_grid(i.src, i.channel) for i in spec.images]
    ref_grid = grids[spec.reference][0] if grids else None
    actions = []
    for im, (grid, channel) in zip(spec.images, grids):
        resample = False
        if im.register is not None:
            resample = True  # onto the reference grid, with the registration's transform
        elif im.on_mismatch != "keep" and ref_grid is not None:
            diff = grid.mismatch(ref_grid)
            if diff and im.on_mismatch == "resample":
                resample = True
            elif diff:
                raise CaseSkip(f"{im.what or 'image'} {im.src} is not on the grid of "
                               f"{spec.images[spec.reference].src}: {diff}")
        direct = channel is None and not resample and im.src.endswith(FILE_ENDING)
        actions.append((im, channel, resample, direct))
    return actions, ref_grid


def _label_image(spec: CaseSpec, ref_grid):
    """The label read fully, checked and mapped (before anything is written), or None."""
    if spec.label is None:
        return None
    sitk = _sitk()
    lab = spec.label
    if lab.mask:
        base = load_image(lab.src, image_grid(lab.src)[1])
        arr = foreground_mask(base, lab.mask)
        ref_info = base
    else:
        lgrid, lchan = image_grid(lab.src)
        if ref_grid is not None:
            diff = lgrid.mismatch(ref_grid)
            if diff:
                raise CaseSkip(f"label file {lab.src} is not on the image grid of "
                               f"{spec.images[spec.reference].src}: {diff}")
        src_img = load_image(lab.src, lchan)
        arr = map_labels(sitk.GetArrayFromImage(src_img), lab.mapping or {}, lab.src, lab.dataset, lab.hints)
        ref_info = src_img
    label_img = sitk.GetImageFromArray(arr)
    label_img.SetSpacing(ref_grid.spacing if ref_grid else ref_info.GetSpacing())
    label_img.SetOrigin(ref_grid.origin if ref_grid else ref_info.GetOrigin())
    label_img.SetDirection(ref_grid.direction if ref_grid else ref_info.GetDirection())
    return label_img


def _register(spec: CaseSpec, cache: dict, info: Dict[str, Any]) -> Dict[int, Any]:
    """Images with ``register`` settings registered onto the reference image: index -> moved
    image. CaseSkip (nothing written) when a registration fails its sanity check."""
    moved: Dict[int, Any] = {}
    ref = spec.images[spec.reference]
    for i, im in enumerate(spec.images):
        if im.register is None or i == spec.reference:
            continue
        fixed = load_image(ref.src, ref.channel, cache)
        img, res = register_rigid(fixed, load_image(im.src, im.channel, cache), im.register)
        info.setdefault("registration", {})[im.what or f"image {i}"] = res.as_dict()
        if not res.ok:
            raise CaseSkip(f"{im.what or 'image'} {im.src}: rigid registration onto {ref.what or 'the reference'} "
                           f"failed its sanity check: {res.problem} ({res.line()}); not written (without "
                           f"registration, --no-register, it is resampled by scanner coordinates)")
        moved[i] = img
    return moved


def execute_case(spec: CaseSpec, folder: str, link: bool) -> CaseResult:
    """Check a case completely (headers, grids, label values, registrations), then write it. Any
    problem skips the case with a reason; files of the case written in this attempt are removed."""
    counts = {"linked": 0, "copied": 0, "link_fallback_copies": 0, "rewritten": 0, "resampled": 0,
              "registered": 0, "labels": 0}
    info: Dict[str, Any] = {}
    written: List[str] = []
    try:
        finals = [safe_join(folder, d) for d in spec.outputs]
        actions, ref_grid = _plan_images(spec)
        label_img = _label_image(spec, ref_grid)
        cache: dict = {}
        moved = _register(spec, cache, info)
        for i, ((im, channel, resample, direct), final) in enumerate(zip(actions, finals)):
            if direct:
                how = place_file(im.src, folder, final, link)
                counts["linked" if how == "linked" else "copied"] += 1
                if how == "fallback":
                    counts["link_fallback_copies"] += 1
            else:
                if i in moved:
                    img = moved[i]
                    counts["registered"] += 1
                elif resample:
                    img = resample_onto(load_image(im.src, channel, cache), ref_grid, linear=True)
                    counts["resampled"] += 1
                else:
                    img = load_image(im.src, channel, cache)
                    counts["rewritten"] += 1
                write_image(img, folder, final)
            written.append(final)
        if label_img is not None:
            write_image(label_img, folder, finals[-1])
            written.append(finals[-1])
            counts["labels"] += 1
        return CaseResult(spec.case_id, True, counts=counts, info=info)
    except CaseSkip as e:
        _remove(written)
        return CaseResult(spec.case_id, False, str(e), counts, info)
    except CASE_ERRORS as e:  # e.g. an unreadable file: this case only
        _remove(written)
        if is_fatal_os_error(e):  # the disk is full / read-only / forbidden: every case would fail
            raise
        return CaseResult(spec.case_id, False, f"failed: {type(e).__name__}: {_first_line(e)}", counts, info)
    except BaseException:
        _remove(written)
        raise


def _remove(paths: Iterable[str]) -> None:
    for p in paths:
        try:
            os.remove(p)
        except OSError:
            pass


def _execute_job(args) -> CaseResult:
    return execute_case(*args)


def run_cases(specs: Sequence[CaseSpec], folder: str, summary: ConversionSummary,
              options: ConvertOptions = ConvertOptions(), *, desc: str = "converting") -> List[CaseSpec]:
    """Convert ``specs`` into ``folder`` as ``options`` say (``overwrite`` converts finished cases
    again); fills ``summary``; returns the finished specs (converted now or earlier) in input order."""
    from tqdm import tqdm
    link, dry_run, force = options.link, options.dry_run, options.overwrite
    num_processes, progress = options.num_processes, options.progress

    # case ids: validity and uniqueness (a problem-free case wins over a broken one of the same id)
    valid: Dict[str, CaseSpec] = {}
    for s in sorted(specs, key=lambda s: s.problem is not None):
        try:
            check_case_id(s.case_id)
        except ManifestError as e:
            summary.skipped[s.case_id] = str(e)
            s.problem = str(e)
            continue
        if s.case_id in valid:
            first = valid[s.case_id]
            src = os.path.dirname(s.images[0].src) if s.images else "?"
            prev = os.path.dirname(first.images[0].src) if first.images else "?"
            s.problem = f"duplicate case id (kept the case from {prev}, this one is from {src})"
            s.info["duplicate"] = True
            summary.skipped.setdefault(s.case_id + f" ({src})", s.problem)
            continue
        valid[s.case_id] = s
    todo: List[CaseSpec] = []
    for s in specs:
        if s.info.get("duplicate") or s.case_id not in valid or valid[s.case_id] is not s:
            continue
        if s.problem:
            summary.skipped[s.case_id] = s.problem
            continue
        try:
            finals = [safe_join(folder, d) for d in s.outputs]
        except CaseSkip as e:
            summary.skipped[s.case_id] = str(e)
            continue
        if not force and finals and all(os.path.isfile(f) for f in finals):
            summary.skipped[s.case_id] = ALREADY_DONE
            continue
        todo.append(s)

    if dry_run:
        summary.converted.extend(s.case_id for s in todo)
        done = set(summary.converted) | set(summary.already_done)
        return [s for s in specs if s.case_id in done and valid.get(s.case_id) is s]

    os.makedirs(folder, exist_ok=True)
    clear_partial(folder)
    results: Dict[str, CaseResult] = {}
    bar = tqdm(total=len(todo), desc=desc, unit="case", disable=not progress or not todo)
    try:
        if num_processes > 1 and len(todo) > 1:
            ex = ProcessPoolExecutor(max_workers=num_processes, mp_context=get_context("spawn"))
            try:
                futs = [ex.submit(_execute_job, (s, folder, link)) for s in todo]
                for f in as_completed(futs):
                    r = f.result()
                    results[r.case_id] = r
                    bar.update(1)
            finally:  # on an error or Ctrl-C: no new case starts
                ex.shutdown(wait=True, cancel_futures=True)
        else:
            for s in todo:
                results[s.case_id] = execute_case(s, folder, link)
                bar.update(1)
    except OSError as e:
        if is_fatal_os_error(e):  # how much the cases not finished would need (for the message)
            e.needed_bytes = estimate_bytes(s for s in todo if s.case_id not in results)  # type: ignore[attr-defined]
        raise
    finally:
        bar.close()
        clear_partial(folder)
    for s in todo:
        r = results[s.case_id]
        for k, v in r.counts.items():
            summary.files[k] = summary.files.get(k, 0) + v
        if r.info:
            summary.case_info[s.case_id] = r.info
        for what, reg in r.info.get("registration", {}).items():
            log.info("%s: %s registered, Mattes MI %.4f -> %.4f, foreground coverage %.0f%% -> %.0f%%, "
                     "rotation %.1f deg, translation %.1f mm", s.case_id, what, reg["metric_initial"],
                     reg["metric_final"], 100 * reg["coverage_initial"], 100 * reg["coverage_final"],
                     reg["rotation_deg"], reg["translation_mm"])
        if r.ok:
            summary.converted.append(s.case_id)
        else:
            summary.skipped[s.case_id] = r.reason
    if summary.files.get("link_fallback_copies"):
        summary.notes.append(f"{summary.files['link_fallback_copies']} file(s) were copied because "
                             f"hard links were not possible (different file systems?).")
    done = set(summary.converted) | set(summary.already_done)
    return [s for s in specs if s.case_id in done and valid.get(s.case_id) is s]
