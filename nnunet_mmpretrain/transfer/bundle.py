"""The encoder bundle: what pretraining hands to fine-tuning, usable without the pretraining
folders and loadable with ``torch.load(weights_only=True)``.

A bundle is a folder::

    encoder_bundle.pt   tensors + plain metadata (see BUNDLE_KEYS)
    bundle.json         the metadata for people (no tensors)
    templates/          template_<modality>.nii.gz for the modalities trained, on the corpus images'
                        world grid (they overlay the corpus in a viewer) when the corpus is on one grid
    pretraining_plans.json
    bundle.json         + model card fields, SHA256 of every file (nnunet_mmpretrain.transfer.model_card)
    MODEL_CARD.md       the same for people

A folder is written whole: it is built in a sibling temporary folder and swapped in when complete
(an existing bundle is moved aside, not deleted, until the new one is in place), so a re-export
never mixes old and new files and a failed one leaves the old bundle as it was. Files get the
modes of the process umask. The temporary folder's name carries the writer's process id
(``.NAME.partial-PID-*``): a later export removes those left by a killed one.

Whenever a bundle folder is loaded (:func:`load_bundle`: fine-tuning, transfer, export) its
weights file, and whenever the fill uses a template (:func:`check_recorded_sha256`), that file is
compared with the SHA-256 recorded in ``bundle.json``: a changed or damaged file is refused with
one line. At export the encoder and stem tensors are checked key by key *and shape by shape*
against the network the plans build.

``encoder_bundle.pt`` holds:

* ``encoder``: the encoder *without* its stem, keyed as in the nnU-Net network built from the
  plans (``encoder.stages.*``); ``key_to_encoder`` / ``key_to_stem`` / ``keys_to_in_proj`` name
  the dynamic-network-architectures contract,
* ``stems``: modality -> stem weights (``key_to_stem.*``, 1 input channel),
* ``templates``: modality -> template volume as the network saw it (``template_space`` 'data':
  nnU-Net z-scores; 'minmax': BrainMVP's [0, 1]), axes in nnU-Net's preprocessed order,
* ``template_geometry``: the world geometry of the template grid
  (:class:`nnunet_mmpretrain.geometry.GridGeometry` as a dict) or None (position-free templates),
* ``modalities_trained``: modalities the corpus had (stems of other modalities are untrained),
* ``network_class_name``, ``arch_kwargs`` (JSON), ``plans`` (JSON), ``configuration``,
  ``vocabulary``, ``versions``, ``epoch``,
* ``stem_origin``: ``'per-modality'`` (our pretraining) or ``'shared'`` (imported from a
  single-stem nnssl checkpoint: every modality holds the same stem),
* ``card``: model-card fields (corpus, method, schedule, proxy-task errors, plans and fingerprint).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Callable, List, Optional

import torch

from nnunet_mmpretrain.geometry import GridGeometry, write_grid_nifti
from nnunet_mmpretrain.io_utils import normal_modes, sha256_file, swap_folder
from nnunet_mmpretrain.planning.compat import resolved_configuration
from nnunet_mmpretrain.pretrain.templates import ModalityTemplates
from nnunet_mmpretrain.transfer.bundle_format import (BUNDLE_FILE, BUNDLE_FORMAT, BundleError, architecture_fields,  # noqa: F401,E501
                                                      check_recorded_sha256, check_shapes, load_weights_only,
                                                      package_versions)
from nnunet_mmpretrain.transfer import model_card
from nnunet_mmpretrain.transfer.model_card import CARD_FILE, META_FILE, REQUIRED
from nnunet_mmpretrain.transfer.nnssl import NnsslError, nnssl_to_bundle
from nnunet_mmpretrain.transfer.supervised import SupervisedBundleError, is_nnunet_checkpoint, supervised_bundle

log = logging.getLogger(__name__)


def bundle_from_any(path: str, settings_of: Optional[Callable[[str], dict]] = None) -> dict:
    """The bundle of a pretraining checkpoint, a bundle folder / ``encoder_bundle.pt``, or an nnssl
    checkpoint (``.pth`` with ``nnssl_adaptation_plan``).

    ``settings_of``: trainer name -> its settings for the model card, asked only when a pretraining
    checkpoint does not record them (transfer imports no trainer; the caller knows them)."""
    if os.path.isdir(path) or os.path.basename(path) == BUNDLE_FILE:
        return load_bundle(path)
    ck = load_weights_only(path, "checkpoint")
    if ck.get("format") == BUNDLE_FORMAT:
        return ck
    if is_nnunet_checkpoint(ck):         # a plain nnU-Net model: its encoder trained with labels
        try:
            return supervised_bundle(ck, path, package_versions(), BUNDLE_FORMAT)
        except SupervisedBundleError as e:
            raise BundleError(str(e)) from None
    if "nnssl_adaptation_plan" in ck:
        try:
            return nnssl_to_bundle(ck, path)
        except NnsslError as e:
            raise BundleError(str(e)) from None
    return _bundle_from_checkpoint_dict(ck, path, settings_of)


def _bundle_from_checkpoint_dict(ck: dict, checkpoint_path: str, settings_of=None) -> dict:
    if "identity" not in ck or "network_weights" not in ck or "mmpretrain" not in ck:
        raise BundleError(f"{checkpoint_path} is not a checkpoint of nnUNetTrainerMMPretrain "
                          f"(keys: {', '.join(sorted(ck)[:8])}).")
    sd = ck["network_weights"]
    plans = json.loads(ck["init_args"]["plans"])
    conf_name = ck["init_args"]["configuration"]
    conf = resolved_configuration(plans, conf_name)
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    arch = conf["architecture"]
    ref = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 2,
                                 allow_init=False, deep_supervision=False)
    key_to_stem = ref.key_to_stem
    vocab = ck["mmpretrain"]["vocabulary"]
    encoder = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    stems = {}
    for i, m in enumerate(vocab):
        pre = f"stems.{i}."
        stems[m] = {f"{key_to_stem}.{k[len(pre):]}": v for k, v in sd.items() if k.startswith(pre)}
    trained = list(ck["mmpretrain"]["modalities_seen"])
    templates = {}
    space = ck["mmpretrain"].get("template_space") or "minmax"
    if "templates.templates" in sd:
        t = sd["templates.templates"]
        bank = ModalityTemplates(tuple(t.shape[1:]), modalities=vocab, init=t, value_space=space)
        with torch.no_grad():
            templates = {m: bank.volume(m).detach().clone() for m in vocab if m in trained}
    # the reference network tells which keys (and shapes) the encoder (minus stem) must have
    ref_sd = ref.state_dict()
    expected = {k for k in ref_sd if k.startswith("encoder.") and not k.startswith(key_to_stem + ".")}
    missing = sorted(expected - set(encoder))
    if missing:
        raise BundleError(f"{checkpoint_path}: encoder keys missing for this architecture: {missing[:5]}")
    check_shapes(checkpoint_path, {k: encoder[k] for k in expected}, ref_sd)
    for m in trained:
        check_shapes(checkpoint_path, stems.get(m, {}), ref_sd, f"stem of {m}: ")
    return {
        "format": BUNDLE_FORMAT,
        "encoder": {k: encoder[k] for k in sorted(expected)},
        "stems": stems,
        "templates": templates,
        "template_spacing": [float(s) for s in conf["spacing"]],
        "template_space": space,
        "template_geometry": ck["mmpretrain"].get("template_geometry"),
        "modalities_trained": trained,
        "vocabulary": vocab,
        **architecture_fields(ref, arch, plans, conf_name),
        "epoch": int(ck["current_epoch"]),
        "objective": json.dumps(ck.get("objective", {})),
        "versions": package_versions(),
        "stem_origin": "per-modality",
        "card": _card(ck, checkpoint_path, settings_of),
    }


def _remove_stale_partials(parent: str, name: str) -> None:
    """Remove ``.NAME.partial-PID-*`` folders of exports whose process is gone (killed)."""
    prefix = f".{name}.partial-"
    for d in os.listdir(parent):
        if not d.startswith(prefix):
            continue
        pid = d[len(prefix):].split("-", 1)[0]
        alive = True
        try:
            os.kill(int(pid), 0)
        except ValueError:   # an older unnamed partial folder: its writer is long gone
            alive = False
        except ProcessLookupError:
            alive = False
        except PermissionError:
            pass
        if not alive:
            shutil.rmtree(os.path.join(parent, d), ignore_errors=True)
            log.info("removed %s, left by an interrupted export", os.path.join(parent, d))


def _card(ck: dict, checkpoint_path: str, settings_of=None) -> dict:
    try:
        settings = ck.get("trainer_settings")
        if settings is None and settings_of is not None:
            settings = settings_of(ck.get("trainer_name"))
        return model_card.describe_checkpoint(ck, checkpoint_path, settings)
    except (KeyError, TypeError, ValueError, OSError) as e:   # a card must not block the export
        log.warning("model card of %s incomplete: %s: %s", checkpoint_path, type(e).__name__, e)
        return {}


def _write_files(bundle: dict, folder: str) -> str:
    geo = bundle.get("template_geometry")
    geo = GridGeometry.from_dict(geo) if geo else None
    for m, vol in bundle["templates"].items():
        write_grid_nifti(vol.float().numpy(), geo, os.path.join(folder, "templates", f"template_{m}.nii.gz"),
                         spacing=bundle["template_spacing"])
    with open(os.path.join(folder, "pretraining_plans.json"), "w") as f:
        json.dump(json.loads(bundle["plans"]), f, indent=2)
    out = os.path.join(folder, BUNDLE_FILE)
    torch.save(bundle, out)
    return out


def save_bundle(bundle: dict, folder: str, license: Optional[str] = None, command: Optional[str] = None) -> str:
    """Write the bundle folder whole (module docstring) with bundle.json and MODEL_CARD.md;
    returns the path of encoder_bundle.pt. ``license`` / ``command`` go into the metadata."""
    folder = os.path.abspath(folder)
    if license:
        bundle["card"] = {**(bundle.get("card") or {}), "license": license}
    if os.path.lexists(folder):
        if not os.path.isdir(folder):
            raise BundleError(f"{folder} exists and is not a folder: choose another output folder.")
        if os.listdir(folder) and not any(os.path.exists(os.path.join(folder, f)) for f in (BUNDLE_FILE, "bundle.json")):
            raise BundleError(f"{folder} is a non-empty folder that holds no bundle: it would be replaced, so choose "
                              f"a new output folder (or empty this one).")
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_partials(parent, os.path.basename(folder))
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.partial-{os.getpid()}-", dir=parent)
    try:
        weights = _write_files(bundle, tmp)
        meta = model_card.bundle_metadata(bundle, tmp, weights, license=license, command=command)
        with open(os.path.join(tmp, "bundle.json"), "w") as f:
            json.dump(meta, f, indent=2)
        with open(os.path.join(tmp, CARD_FILE), "w") as f:
            f.write(model_card.render_model_card(meta))
        normal_modes(tmp)
        swap_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("bundle written to %s", folder)
    return os.path.join(folder, BUNDLE_FILE)


def load_bundle(path: str) -> dict:
    """Load ``encoder_bundle.pt`` (or the bundle folder) with ``weights_only=True``; clear errors
    for a missing, truncated, pickled or foreign file."""
    if os.path.isdir(path):
        path = os.path.join(path, BUNDLE_FILE)
    check_recorded_sha256(path)
    b = load_weights_only(path, "encoder bundle")
    if b.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not an encoder bundle (format {b.get('format')!r}, expected "
                          f"{BUNDLE_FORMAT!r}); make one with nnUNetv2_mmpretrain_export CHECKPOINT -o FOLDER.")
    return b


def verify_bundle(folder: str) -> List[str]:
    """Problems of a bundle folder (empty when it is sound): bundle.json readable and complete, the
    weights' and every listed file's SHA256, and bundle.json agreeing with the weights file."""
    if not os.path.isdir(folder):
        return [f"{folder} is not a folder: pass the bundle folder written by nnUNetv2_mmpretrain_export"]
    mf = os.path.join(folder, META_FILE)
    try:
        with open(mf) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        return [f"{mf} cannot be read ({type(e).__name__}): re-export the bundle"]
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        return [f"{mf} lacks {', '.join(missing)}: written by an older exporter; re-export the bundle"]
    problems = []
    for rel, want in sorted(meta["files"].items()):
        p = os.path.join(folder, rel)
        if not os.path.isfile(p):
            problems.append(f"{p} is missing")
        elif sha256_file(p) != want:
            problems.append(f"{p}: SHA256 differs from bundle.json (file changed or damaged)")
    wf = os.path.join(folder, meta["weights_file"])
    if os.path.isfile(wf) and sha256_file(wf) != meta["weights_sha256"] and not any(wf in x for x in problems):
        problems.append(f"{wf}: SHA256 differs from bundle.json weights_sha256 (file changed or damaged)")
    listed = set(meta["files"]) | {META_FILE, CARD_FILE}
    extra = sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs
                   if os.path.relpath(os.path.join(r, f), folder) not in listed)
    if extra:
        problems.append(f"{os.path.join(folder, extra[0])} is not part of the bundle ({len(extra)} unlisted file(s))")
    if problems:
        return [p + "; re-export the bundle or copy it again" for p in problems]
    try:
        b = load_bundle(wf)
    except BundleError as e:
        return [str(e)]
    for k, got in (("encoder_keys", len(b["encoder"])), ("network_class_name", b["network_class_name"]),
                   ("configuration", b["configuration"]), ("format", b["format"])):
        if meta.get(k) != got:
            problems.append(f"{mf}: {k} = {meta.get(k)!r} but the weights file has {got!r}")
    if meta["modality_order"].get("trained") != list(b["modalities_trained"]):
        problems.append(f"{mf}: modality_order.trained differs from the weights file's modalities_trained")
    return problems
