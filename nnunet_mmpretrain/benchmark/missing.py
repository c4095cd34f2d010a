"""Missing-modality evaluation: the same trained model, one input channel removed at inference.

For a finished cell of a method listed in the suite's ``missing_modality`` block, every listed
channel c of the validation cases is removed and filled

* ``template``: by the pretrained template of the modality c carries, through
  ``nnUNetv2_mmpretrain_predict --bundle B`` (the channel's file is simply absent), or
* ``zero``: by an image of zeros on the case's grid, through plain ``nnUNetv2_predict``;

then ``nnUNetv2_evaluate_folder --chill`` scores the predictions against ``labelsTr``. Outputs
(``OUT/cells/NAME/missing/no{c}_{fill}/summary.json``) are written once and never redone; this
stage also runs for cells that finished before the block was added to the suite. The leaderboard
reports them as evaluation ``cv-no{c}-{fill}`` and compares template with zero fill per method.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

from nnunet_mmpretrain.benchmark import prepare as prep
from nnunet_mmpretrain.io_utils import atomic_path


def zero_like(src: str, dst: str) -> None:
    """An image of zeros with the geometry (and pixel type) of ``src``."""
    import SimpleITK as sitk
    img = sitk.ReadImage(src)
    z = sitk.Image(img.GetSize(), img.GetPixelID(), img.GetNumberOfComponentsPerPixel())
    z.CopyInformation(img)
    with atomic_path(dst) as tmp:
        sitk.WriteImage(z, tmp, useCompression=True)


def build_input(raw_ds: str, cases: List[str], channel: int, fill: str, folder: str, ending: str) -> None:
    """``folder`` with the cases' channel files linked, ``channel`` left out (template) or zeros."""
    os.makedirs(folder, exist_ok=True)
    images = os.path.join(raw_ds, "imagesTr")
    for case in cases:
        for f in sorted(os.listdir(images)):
            if not (f.startswith(case + "_") and f.endswith(ending) and len(f) == len(case) + 5 + len(ending)):
                continue
            dst = os.path.join(folder, f)
            if os.path.lexists(dst):
                continue
            if int(f[len(case) + 1: len(case) + 5]) != channel:
                os.symlink(os.path.join(images, f), dst)
            elif fill == "zero":
                zero_like(os.path.join(images, f), dst)


def run_missing(runner, cell, ds_name: str, split: dict, env: Dict[str, str], logf: str, tag: str,
                bundle: Optional[str]) -> None:
    """All (channel, fill) evaluations of one finished cell (skipping those already done)."""
    spec = runner.suite.missing_modality
    if not spec or cell.method.name not in spec["methods"] or cell.dataset.task != "segmentation":
        return
    s, f = runner.suite, runner.f
    raw_ds = os.path.join(f.raw, ds_name)
    if os.path.isfile(os.path.join(raw_ds, "dataset.json")):
        with open(os.path.join(raw_ds, "dataset.json")) as fh:
            dj = json.load(fh)
    elif runner.dry_run:                  # phantoms not made yet: list the commands anyway
        dj = {"channel_names": {str(c): "?" for c in spec.get("channels") or range(4)}}
    else:
        raise prep.StepFailed(f"{tag} {cell.name}: no {os.path.join(raw_ds, 'dataset.json')}")
    ending = dj.get("file_ending", ".nii.gz")
    channels = spec.get("channels") or list(range(len(dj["channel_names"])))
    model = os.path.dirname(runner.fold_dir(cell, ds_name))
    tbundle = bundle or (f.bundle(spec["bundle_preset"]) if spec.get("bundle_preset") else None)
    for c in channels:
        for fill in spec.get("fills", ["template", "zero"]):
            out = os.path.join(f.cells, cell.name, "missing", f"no{c}_{fill}")
            summary = os.path.join(out, "summary.json")
            if os.path.isfile(summary):
                continue
            inp, pred = os.path.join(out, "input"), os.path.join(out, "predictions")
            if not runner.dry_run:
                build_input(raw_ds, split["val"], c, fill, inp, ending)
            common = ["-i", inp, "-o", pred, "-d", cell.dataset.id, "-c", s.configuration, "-f", cell.fold,
                      "-tr", cell.trainer, "-p", s.plans, "-device", runner.device]
            if fill == "template":
                cmd = ["nnUNetv2_mmpretrain_predict", *common, "--bundle", tbundle, "-np", "1"]
            else:
                cmd = ["nnUNetv2_predict", *common, "-npp", "1", "-nps", "1"]
                if not s.schedule_for(cell.method).get("mirroring", False):
                    cmd.append("--disable_tta")
            label = f"{tag} {cell.name} without channel {c} ({dj['channel_names'][str(c)]}), {fill} fill"
            prep.run_step(label, cmd, env, logf, runner.dry_run)
            prep.run_step(f"{label}: evaluation",
                          ["nnUNetv2_evaluate_folder", os.path.join(raw_ds, "labelsTr"), pred, "-djfile",
                           os.path.join(model, "dataset.json"), "-pfile", os.path.join(model, "plans.json"), "-o",
                           summary, "-np", "1", "--chill"], env, logf, runner.dry_run)


def check_spec(mm: dict, c, methods: dict, presets: dict) -> None:
    """Validate a suite's ``missing_modality`` block; ``c`` is the suite's checker (raises SuiteError)."""
    c.keys(mm, "missing_modality", {"methods", "channels", "fills", "bundle_preset"}, required=("methods",))
    for i, mname in enumerate(c.typed(mm["methods"], "missing_modality.methods", list, "a list of methods")):
        if mname not in methods:
            c.fail(f"missing_modality.methods[{i}]", f"{mname!r} is not a method of this suite")
    fills = mm.get("fills", ["template", "zero"])
    if not isinstance(fills, list) or not fills or set(fills) - {"template", "zero"}:
        c.fail("missing_modality.fills", f"expected a list of 'template' / 'zero', got {json.dumps(fills)}")
    if "channels" in mm:
        c.int_list(mm["channels"], "missing_modality.channels")
    bp = mm.get("bundle_preset")
    if bp is not None and bp not in presets:
        c.fail("missing_modality.bundle_preset", f"unknown preset {bp!r}")
    if "template" in fills:
        for mname in mm["methods"]:
            if not methods[mname].pretraining and bp is None:
                c.fail("missing_modality.bundle_preset", f"method {mname!r} has no bundle whose templates "
                                                         f"could fill a channel; name a preset here")
