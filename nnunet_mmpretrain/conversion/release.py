"""The release model: one declarative :class:`Release` entry per public release, run by one
generic converter (:func:`run_release`) with the run's :class:`ConvertOptions`.

A release module declares what is particular to it and nothing else:

* a :class:`Release` entry ``RELEASE``: command-line name and help, what it writes
  (:data:`SEGMENTATION`, :data:`CLASSIFICATION` or :data:`CORPUS`), default dataset id and name,
  reference, licence, label convention (:mod:`nnunet_mmpretrain.labels`) and its own settings
  (:class:`Setting`, each one keyword of ``convert()`` and one command-line option);
* a *plan* function ``plan(root, **settings) -> Plan``: discovery (paths only, no image is read
  unless the release needs it) and what the output describes (channels, description, sources).

Everything else -- checking the release folder, naming the dataset folder, refusing an empty
release, writing the raw dataset or the corpus, the summary -- is done here, the same way for
every release. ``nnunet_mmpretrain.cli.convert`` builds its sub-commands from the same entries
(:mod:`~nnunet_mmpretrain.conversion.registry`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_mmpretrain.conversion.corpus_writer import convert_corpus
from nnunet_mmpretrain.conversion.options import ConvertOptions
from nnunet_mmpretrain.conversion.paths import dataset_folder, require_root
from nnunet_mmpretrain.conversion.raw_dataset import DatasetInfo, convert_segmentation
from nnunet_mmpretrain.conversion.spec import CaseSpec
from nnunet_mmpretrain.conversion.summary import ConversionError, ConversionSummary, report_summary

log = logging.getLogger(__name__)

SEGMENTATION, CLASSIFICATION, CORPUS = "segmentation", "classification", "corpus"


@dataclass(frozen=True)
class Setting:
    """One release-specific setting: a keyword of the release's ``convert()`` and, when ``flags``
    is not empty, a command-line option of its sub-command.

    ``cli`` holds further :meth:`argparse.ArgumentParser.add_argument` keywords (``choices``,
    ``action``, ``type``, ``metavar``, ``required``); ``parse`` turns the command-line value into
    the keyword value (e.g. a comma-separated list), raising ConversionError on bad text."""
    name: str
    default: Any = None
    flags: Tuple[str, ...] = ()
    help: str = ""
    cli: Mapping[str, Any] = field(default_factory=dict)
    parse: Optional[Callable[[Any], Any]] = None


#: settings every corpus release has (the dataset-wide ones are consumed by :func:`run_release`)
CORPUS_SETTINGS = (
    Setting("case_prefix", "", ("--case-prefix",),
            "prefix for every case id (avoids clashes when several sources share one corpus)"),
    Setting("atlas_registered", "auto", ("--atlas-registered",),
            "manifest flag: all scans on one atlas grid (auto: checked on the headers)",
            cli={"choices": ("auto", "yes", "no")},
            parse=lambda v: {"auto": "auto", "yes": True, "no": False}[v]),
    Setting("allow_duplicates", False, ("--allow-duplicates",),
            "keep a case whose scan (voxels) is already in the corpus under another id (default: keep the first)",
            cli={"action": "store_true"}),
)


@dataclass
class Plan:
    """What a release's plan function found and what the output says about it.

    ``empty``: the one-line error when ``specs`` is empty. ``title`` / ``dataset_id`` / ``name``
    override the entry's (e.g. per sub-challenge). Raw datasets: ``channels``, ``labels`` (a
    :class:`~nnunet_mmpretrain.labels.LabelConvention`, default the entry's) or ``label_json``
    (dataset.json ``labels`` without a convention), ``description``, ``conversion`` (entries of
    dataset.json's ``conversion`` block after ``kind`` and ``source``), ``extra`` (other top-level
    dataset.json entries) and ``classes`` (``classes.csv`` header and row function). Corpora:
    ``sources`` (manifest sources). ``skipped_files`` / ``notes`` go into the summary;
    ``finish(summary, folder, options)`` runs after writing (e.g. a per-case metrics table)."""
    specs: List[CaseSpec]
    empty: str
    title: Optional[str] = None
    source: Optional[str] = None
    dataset_id: Optional[int] = None
    name: Optional[str] = None
    channels: Sequence[str] = ()
    labels: Any = None
    label_json: Optional[Dict[str, Any]] = None
    description: str = ""
    conversion: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)
    classes: Optional[Tuple[Sequence[str], Callable[[CaseSpec], Sequence[Any]]]] = None
    sources: Dict[str, dict] = field(default_factory=dict)
    skipped_files: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    finish: Optional[Callable[[ConversionSummary, str, ConvertOptions], None]] = None


@dataclass(frozen=True)
class Release:
    """One public release: the declarative entry the generic converter and the CLI read.

    ``kind``: the sub-command; ``title``: the name in summaries and messages; ``output``: what is
    written; ``plan``: the discovery function (``plan(root, **settings) -> Plan``);
    ``default_id`` / ``default_name``: the dataset folder unless the plan or the caller chooses
    (``default_id_help`` says it on the command line when it depends on a setting); ``labels``: the
    label convention of the release (None for images only or when it depends on a setting);
    ``root_word``: how messages about the release folder name it (default ``title``)."""
    kind: str
    title: str
    output: str
    help: str
    plan: Callable[..., Plan]
    default_id: Optional[int] = None
    default_name: str = ""
    settings: Tuple[Setting, ...] = ()
    labels: Any = None
    reference: str = ""
    licence: str = "see the release's licence"
    root_help: str = "folder of the unpacked public release"
    root_word: Optional[str] = None
    default_id_help: str = ""

    @property
    def all_settings(self) -> Tuple[Setting, ...]:
        """The release's settings, after :data:`CORPUS_SETTINGS` for a corpus."""
        return (CORPUS_SETTINGS if self.output == CORPUS else ()) + self.settings

    def convert(self, release_root: str, out_dir: Optional[str] = None, dataset_id: Optional[int] = None,
                name: Optional[str] = None, *, options: Optional[ConvertOptions] = None,
                **settings: Any) -> ConversionSummary:
        """Convert ``release_root`` into ``out_dir`` (default ``$nnUNet_raw``) as
        ``DatasetID_NAME``; ``settings``: the entry's settings by keyword, and optionally the
        :class:`ConvertOptions` fields (``progress=False``) instead of ``options``."""
        return run_release(self, release_root, out_dir, dataset_id, name,
                           ConvertOptions.take(options, settings), **settings)


def resolve_settings(release: Release, given: Dict[str, Any]) -> Dict[str, Any]:
    """The entry's settings with their defaults, overridden by ``given``; unknown names refused."""
    values = {s.name: s.default for s in release.all_settings}
    unknown = sorted(set(given) - set(values))
    if unknown:
        raise TypeError(f"{release.kind} conversion got unknown keyword(s) {', '.join(unknown)} "
                        f"(known: {', '.join(values) or 'none'}, and the ConvertOptions fields)")
    values.update(given)
    return values


def run_release(release: Release, release_root: str, out_dir: Optional[str], dataset_id: Optional[int],
                name: Optional[str], options: ConvertOptions, **settings: Any) -> ConversionSummary:
    """The generic converter: check the release folder, plan, name the dataset folder, write the
    raw dataset or corpus, then complete and report the summary."""
    values = resolve_settings(release, settings)
    atlas_registered = values.pop("atlas_registered", "auto")
    allow_duplicates = values.pop("allow_duplicates", False)
    root = require_root(release_root, release.root_word or release.title)
    plan = release.plan(root, **values)
    title = plan.title or release.title
    if dataset_id is None:
        dataset_id = plan.dataset_id if plan.dataset_id is not None else release.default_id
        if dataset_id is None:
            raise ConversionError(f"no default dataset id for {title}: pass -d ID.")
    folder = dataset_folder(out_dir, dataset_id, name or plan.name or release.default_name)
    if not plan.specs:
        raise ConversionError(plan.empty)
    log.debug("%s: %d case(s) found under %s -> %s", title, len(plan.specs), root, folder)
    if release.output == CORPUS:
        summary = convert_corpus(title, plan.specs, folder, plan.sources, atlas_registered=atlas_registered,
                                 allow_duplicates=allow_duplicates, options=options)
    else:
        summary = convert_segmentation(title, plan.specs, folder, dataset_info(release, plan, root),
                                       options=options, classes=plan.classes)
    summary.skipped_files.update(plan.skipped_files)
    if plan.finish is not None:
        plan.finish(summary, folder, options)
    summary.notes.extend(plan.notes)
    if options.print_summary:
        report_summary(summary)
    return summary


def dataset_info(release: Release, plan: Plan, root: str) -> DatasetInfo:
    """dataset.json content of a raw dataset: the plan's channels, labels and description with
    the entry's reference and licence, and a ``conversion`` block (kind, source, the plan's
    entries, the label mapping from the release)."""
    convention = plan.labels if plan.labels is not None else release.labels
    conversion = {"kind": release.kind, "source": plan.source or root, **plan.conversion}
    if convention is not None:
        conversion["label_mapping_from_release"] = convention.mapping_json()
        label_json = convention.dataset_json()
    else:
        label_json = {"labels": plan.label_json or {"background": 0}}
    return DatasetInfo(channel_names=list(plan.channels), **label_json, description=plan.description,
                       reference=release.reference, licence=release.licence,
                       extra={**plan.extra, "conversion": conversion})
