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
from typing import Dict, Optional

import torch

from nnunet_mmpretrain.io_utils import sha256_file

BUNDLE_FORMAT = "nnunet_mmpretrain.bundle/1"
BUNDLE_FILE = "encoder_bundle.pt"
META_FILE = "bundle.json"
log = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle that cannot be used, with the reason and the fix."""


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for p in ("nnunet-mmpretrain", "nnunetv2", "torch", "dynamic_network_architectures"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = "unknown"
    return out


def _load_weights_only(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise BundleError(f"{what} {path} does not exist.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if "Weights only load failed" in str(e) or "weights_only" in str(e):
            raise BundleError(f"{path} is not a weights-only file (it needs full pickle to load, which can run "
                              f"arbitrary code): it was not written by nnUNetv2_mmpretrain_export. Re-export the "
                              f"pretraining checkpoint with nnUNetv2_mmpretrain_export.") from None
        raise BundleError(f"{path} cannot be read ({type(e).__name__}: {first}); the file is truncated or "
                          f"damaged: copy it again or re-export it with nnUNetv2_mmpretrain_export.") from None
    if not isinstance(obj, dict):
        raise BundleError(f"{path} does not hold a dict: not a {what}.")
    return obj


def bundle_from_checkpoint(checkpoint_path: str) -> dict:
    """Build the bundle dict from a pretraining checkpoint (``checkpoint_final.pth``)."""
    ck = _load_weights_only(checkpoint_path, "pretraining checkpoint")
    return _bundle_from_checkpoint_dict(ck, checkpoint_path)


def bundle_from_any(path: str) -> dict:
    """The bundle of a pretraining checkpoint, a bundle folder / ``encoder_bundle.pt``, or an nnssl
    checkpoint (``.pth`` with ``nnssl_adaptation_plan``)."""
    if os.path.isdir(path) or os.path.basename(path) == BUNDLE_FILE:
        return load_bundle(path)
    ck = _load_weights_only(path, "checkpoint")
    if ck.get("format") == BUNDLE_FORMAT:
        return ck
    if "nnssl_adaptation_plan" in ck:
        from nnunet_mmpretrain.transfer.nnssl import NnsslError, nnssl_to_bundle
        try:
            return nnssl_to_bundle(ck, path)
        except NnsslError as e:
            raise BundleError(str(e)) from None
    return _bundle_from_checkpoint_dict(ck, path)


def _bundle_from_checkpoint_dict(ck: dict, checkpoint_path: str) -> dict:
    if "identity" not in ck or "network_weights" not in ck or "mmpretrain" not in ck:
        raise BundleError(f"{checkpoint_path} is not a checkpoint of nnUNetTrainerMMPretrain "
                          f"(keys: {', '.join(sorted(ck)[:8])}).")
    sd = ck["network_weights"]
    plans = json.loads(ck["init_args"]["plans"])
    conf_name = ck["init_args"]["configuration"]
    from nnunet_mmpretrain.planning.transfer import resolved_configuration
    conf = resolved_configuration(plans, conf_name)
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    arch = conf["architecture"]
    ref = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 2,
                                 allow_init=False, deep_supervision=False)
    key_to_stem, key_to_encoder = ref.key_to_stem, ref.key_to_encoder
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
        from nnunet_mmpretrain.pretrain.templates import ModalityTemplates
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
        "key_to_encoder": key_to_encoder,
        "key_to_stem": key_to_stem,
        "keys_to_in_proj": list(getattr(ref, "keys_to_in_proj", ())),
        "network_class_name": arch["network_class_name"],
        "arch_kwargs": json.dumps(arch["arch_kwargs"], sort_keys=True),
        "plans": json.dumps(plans),
        "configuration": conf_name,
        "epoch": int(ck["current_epoch"]),
        "objective": json.dumps(ck.get("objective", {})),
        "versions": _versions(),
        "stem_origin": "per-modality",
        "card": _card(ck, checkpoint_path),
    }


def check_shapes(where: str, tensors: Dict[str, torch.Tensor], reference: Dict[str, torch.Tensor],
                 what: str = "") -> None:
    """BundleError naming the first tensor whose shape differs from ``reference``'s (same key)."""
    for k in sorted(tensors):
        want = reference.get(k)
        if want is not None and tuple(tensors[k].shape) != tuple(want.shape):
            raise BundleError(f"{where}: {what}{k} has shape {tuple(tensors[k].shape)} but the architecture of its "
                              f"plans needs {tuple(want.shape)}: the checkpoint does not match its plans; export "
                              f"the checkpoint its pretraining run wrote.")


def check_recorded_sha256(path: str) -> None:
    """BundleError when ``path`` (a file of a bundle folder) differs from the SHA-256 its
    ``bundle.json`` records; nothing when the folder has no bundle.json or does not list it."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    for _ in range(2):  # the bundle folder, or the one above templates/
        meta_file = os.path.join(folder, META_FILE)
        if os.path.isfile(meta_file):
            break
        folder = os.path.dirname(folder)
    else:
        return
    try:
        with open(meta_file) as f:
            meta = json.load(f)
        rel = os.path.relpath(path, folder)
        want = (meta.get("files") or {}).get(rel) or (meta.get("weights_sha256") if rel == meta.get("weights_file")
                                                      else None)
    except (OSError, ValueError, AttributeError):
        raise BundleError(f"{meta_file} cannot be read: the bundle is damaged; copy it again or re-export it "
                          f"with nnUNetv2_mmpretrain_export.") from None
    if want and os.path.isfile(path) and sha256_file(path) != want:
        raise BundleError(f"{path}: SHA-256 differs from the one {meta_file} records (the file is truncated or "
                          f"damaged, or was changed after export): copy the bundle again or re-export it "
                          f"(nnUNetv2_mmpretrain_export --verify {folder} lists every difference).")


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


def _card(ck: dict, checkpoint_path: str) -> dict:
    from nnunet_mmpretrain.transfer.model_card import describe_checkpoint
    try:
        return describe_checkpoint(ck, checkpoint_path)
    except (KeyError, TypeError, ValueError, OSError) as e:   # a card must not block the export
        log.warning("model card of %s incomplete: %s: %s", checkpoint_path, type(e).__name__, e)
        return {}


def _write_files(bundle: dict, folder: str) -> str:
    from nnunet_mmpretrain.geometry import GridGeometry, write_grid_nifti
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
    from nnunet_mmpretrain.io_utils import normal_modes, swap_folder
    from nnunet_mmpretrain.transfer.model_card import CARD_FILE, bundle_metadata, render_model_card
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
        meta = bundle_metadata(bundle, tmp, weights, license=license, command=command)
        with open(os.path.join(tmp, "bundle.json"), "w") as f:
            json.dump(meta, f, indent=2)
        with open(os.path.join(tmp, CARD_FILE), "w") as f:
            f.write(render_model_card(meta))
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
    b = _load_weights_only(path, "encoder bundle")
    if b.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path} is not an encoder bundle (format {b.get('format')!r}, expected "
                          f"{BUNDLE_FORMAT!r}); make one with nnUNetv2_mmpretrain_export CHECKPOINT -o FOLDER.")
    return b
