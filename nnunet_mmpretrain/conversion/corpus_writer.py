"""Pretraining corpora: ``images/`` and ``manifest.json``, several sources in one folder.

The same scan twice -- a case whose image has the voxels of an image of another case (content
hash, :mod:`nnunet_mmpretrain.content_hash`), across sources and releases (BraTS 2023 GLI training
is BraTS 2021 renamed) -- is kept once: the case already in the corpus, or the first one, stays;
the later one is left out with its reason and a summary line (``allow_duplicates`` keeps both).
Hashes are remembered in ``.content_hashes.json`` in the corpus folder."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

from nnunet_mmpretrain.content_hash import HashCache, first_owner
from nnunet_mmpretrain.conversion.execute import run_cases
from nnunet_mmpretrain.conversion.imageio import image_grid
from nnunet_mmpretrain.conversion.options import ConvertOptions
from nnunet_mmpretrain.conversion.spec import CaseSpec, corpus_image_dst
from nnunet_mmpretrain.conversion.staging import Staging, link_tree, refuse_release_inside, restore_interrupted
from nnunet_mmpretrain.conversion.summary import CaseSkip, ConversionError, ConversionSummary
from nnunet_mmpretrain.corpus.manifest import (CorpusCase, CorpusManifest, ManifestError, MANIFEST_NAME,
                                               load_manifest, save_manifest)


def convert_corpus(kind: str, specs: Sequence[CaseSpec], folder: str, sources: Dict[str, dict], *,
                   options: ConvertOptions, atlas_registered: "str | bool" = "auto",
                   allow_duplicates: bool = False) -> ConversionSummary:
    """Write (or extend) a pretraining corpus folder: ``images/`` and ``manifest.json``.

    A corpus folder may hold several sources: cases of other sources already in its manifest are
    kept, so converting BraTS, IXI and UCSF-PDGM with the same ``-d``/``--name`` builds one
    multi-source corpus. ``atlas_registered``: True/False, or 'auto' (True when every scan of
    the corpus lies on one voxel grid); ``options``: how the run goes
    (:class:`~nnunet_mmpretrain.conversion.options.ConvertOptions`); the caller reports the
    returned summary."""
    dry_run, overwrite = options.dry_run, options.overwrite
    summary = ConversionSummary(kind=kind, output=folder, dry_run=dry_run)
    if not specs:
        raise ConversionError(f"no {kind} cases found.")
    these = set(sources) | {s.info.get("source") for s in specs}
    if not dry_run:
        restore_interrupted(folder)
    old = None
    mpath = os.path.join(folder, MANIFEST_NAME)
    if os.path.isfile(mpath):
        try:
            old = load_manifest(mpath)
        except (ManifestError, ValueError) as e:
            raise ConversionError(f"the existing manifest in {folder} cannot be read ({e}); move it "
                                  f"away or pass --overwrite.") from None
    refuse_release_inside(folder, specs)
    kept: List[CorpusCase] = []
    mine_files: List[str] = []
    if old is not None:
        others = [c for c in old.cases if c.source not in these]
        if overwrite:
            mine = [c for c in old.cases if c.source in these]
            mine_files = [old.path(c, m) for c in mine for m in c.images]
            if dry_run:
                summary.notes.append(f"--overwrite: would replace {len(mine)} case(s) of source(s) "
                                     f"{', '.join(sorted(these))} and convert them again.")
        kept = others
        taken = {c.case_id: c.source for c in others}
        for s in specs:
            if s.case_id in taken and s.problem is None:
                s.problem = (f"case id already in the corpus from source {taken[s.case_id]!r} "
                             f"(use --case-prefix)")
    elif overwrite and os.path.isdir(folder) and dry_run:
        summary.notes.append(f"--overwrite: would replace {folder} (built beside it, swapped in when "
                             f"complete) and convert every case again.")
    stage = Staging(folder, overwrite, dry_run, what="corpus")
    try:
        if stage.staged and old is not None:  # the other sources' files, hard-linked
            link_tree(folder, stage.build, skip=mine_files + [mpath])
        finished = run_cases(specs, stage.build, summary, options, desc=os.path.basename(folder))
        if not dry_run:
            finished = _drop_duplicates(stage.build, finished, kept, summary, allow_duplicates)
            _write_manifest(stage, folder, finished, kept, old, sources, atlas_registered, summary)
    except BaseException as e:
        raise stage.fail(e) from None
    return summary


HASHES_NAME = ".content_hashes.json"


def _drop_duplicates(build: str, finished: Sequence[CaseSpec], kept: Sequence[CorpusCase],
                     summary: ConversionSummary, allow: bool) -> List[CaseSpec]:
    """``finished`` without the cases repeating a scan of a kept case or of an earlier finished
    one (their files in ``build`` removed); every repeat is named in ``summary``."""
    if not finished:  # nothing new: nothing to compare, nothing written
        return []
    cache = HashCache(os.path.join(build, HASHES_NAME), root=build)
    items = [(c.case_id, [(m, os.path.join(build, p)) for m, p in c.images.items()]) for c in kept]
    items += [(s.case_id, [(m, os.path.join(build, corpus_image_dst(s.case_id, m))) for m in s.info["modalities"]])
              for s in finished]
    hashes = {p: cache.get(p) for _, images in items for _, p in images if os.path.isfile(p)}
    cache.save()
    dups = first_owner(items, hashes)
    if not dups:
        return list(finished)
    first, (_, other, _) = next(iter(dups.items()))
    head = (f"{len(dups)} case(s) repeat a scan already in the corpus under another id (same voxels), "
            f"e.g. {first} = {other}")
    if allow:
        summary.notes.append(f"{head}: both kept (--allow-duplicates)")
        return list(finished)
    summary.notes.append(f"{head}: kept the first only (--allow-duplicates keeps both)")
    for cid, (path, other, other_path) in dups.items():
        summary.skipped[cid] = (f"same scan as case {other} ({os.path.relpath(other_path, build)} has the "
                                f"voxels of {os.path.relpath(path, build)}): kept {other} only")
        if cid in summary.converted:
            summary.converted.remove(cid)
    out = []
    for s in finished:
        if s.case_id in dups:
            for m in s.info["modalities"]:
                p = os.path.join(build, corpus_image_dst(s.case_id, m))
                if os.path.isfile(p):
                    os.remove(p)
        else:
            out.append(s)
    return out


def _write_manifest(stage: Staging, folder: str, finished: Sequence[CaseSpec], kept: List[CorpusCase],
                    old, sources: Dict[str, dict], atlas_registered, summary: ConversionSummary) -> None:
    new_cases = [CorpusCase(case_id=s.case_id,
                            images={m: corpus_image_dst(s.case_id, m) for m in s.info["modalities"]},
                            subject=s.info.get("subject") or s.case_id,
                            session=s.info.get("session", ""), source=s.info["source"])
                 for s in finished]
    cases = kept + new_cases
    if not cases or not new_cases and stage.staged:
        summary.notes.append("no case could be converted: manifest.json was not written"
                             + ("; the previous corpus is unchanged." if stage.staged else "."))
        stage.discard()
        return
    all_sources = dict(old.sources) if old is not None else {}
    all_sources.update(sources)
    used = {c.source for c in cases}
    all_sources = {k: v for k, v in all_sources.items() if k in used}
    name = os.path.basename(folder).split("_", 1)[1]
    manifest = CorpusManifest(name=name, cases=cases, sources=all_sources, root=stage.build)
    if atlas_registered == "auto":
        manifest.atlas_registered = _one_grid(manifest)
    else:
        manifest.atlas_registered = bool(atlas_registered)
    save_manifest(manifest, stage.build)
    stage.commit()
    c = manifest.counts()
    summary.notes.append(f"manifest: {c['cases']} case(s), {c['scans']} scan(s) "
                         f"{c['scans_per_modality']}, atlas_registered={manifest.atlas_registered}")


def _one_grid(manifest: CorpusManifest) -> bool:
    first = None
    for c in manifest.cases:
        for m in c.images:
            try:
                g, _ = image_grid(manifest.path(c, m))
            except CaseSkip:
                return False
            if first is None:
                first = g
            elif g.mismatch(first, tol=1e-2):
                return False
    return first is not None
