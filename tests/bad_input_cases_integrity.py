"""Catalogue cases of data integrity and faults (see bad_input_cases.py): the same scan under two
ids, spacing and orientation outliers, two runs on one corpus, bundles changed after export,
refused writes of checkpoints and bundles (a full disk simulated by a failing torch.save: no
real disk is filled), channels off the case grid, bad worker counts."""
from __future__ import annotations

import errno
import json
import os

import numpy as np

CORPUS = "Dataset900_C"
SHAPE = (8, 12, 10)


def tiny_bundle(folder: str, templates: bool = False) -> str:
    """A bundle folder written by save_bundle (bundle.json with the SHA-256 of every file) around
    a few small tensors: enough for the commands that read bundles to get to their checks."""
    import torch
    from nnunet_mmpretrain.transfer.bundle import BUNDLE_FORMAT, save_bundle
    b = {"format": BUNDLE_FORMAT, "encoder": {"encoder.stages.0.w": torch.ones(2, 2)},
         "stems": {"t1": {"encoder.stem.w": torch.ones(2, 1)}},
         "templates": {"t1": torch.rand(6, 8, 7, generator=torch.Generator().manual_seed(0))} if templates else {},
         "template_spacing": [1.0, 1.0, 1.0], "template_space": "data", "template_geometry": None,
         "modalities_trained": ["t1"], "vocabulary": ["t1"], "key_to_encoder": "encoder", "key_to_stem": "encoder.stem",
         "keys_to_in_proj": [], "network_class_name": "tiny.Net", "arch_kwargs": "{}",
         "plans": json.dumps({"transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2]}),
         "configuration": "3d_fullres", "epoch": 1, "objective": "{}", "versions": {}, "stem_origin": "per-modality",
         "card": {}}
    save_bundle(b, folder)
    return folder


def register(case, img, damage):  # noqa: C901 - one table of cases
    def corpus(ws, n=3, spacing=None, direction=None, atlas=None, copy_of=None):
        """raw/Dataset900_C: ``n`` cases (t1, t2) with their own voxels; ``spacing`` / ``direction``:
        case index -> header of its images; ``copy_of``: (new id, case index) copied under new names."""
        folder = os.path.join(ws.raw, CORPUS)
        cases = []
        for i in range(n):
            cid = f"c{i}"
            for j, m in enumerate(("t1", "t2")):
                kw = {"spacing": (spacing or {}).get(i, (4.0, 4.0, 4.0))}
                if (direction or {}).get(i):
                    kw["direction"] = direction[i]
                img(os.path.join(folder, "images", f"{cid}_{m}.nii.gz"),
                    np.random.default_rng(10 * i + j).random(SHAPE).astype(np.float32) + 1, **kw)
            cases.append({"case_id": cid, "images": {m: f"images/{cid}_{m}.nii.gz" for m in ("t1", "t2")},
                          "subject": f"s{i}", "session": "1"})
        if copy_of:
            new, i = copy_of
            for m in ("t1", "t2"):
                with open(os.path.join(folder, "images", f"c{i}_{m}.nii.gz"), "rb") as f:
                    data = f.read()
                with open(os.path.join(folder, "images", f"{new}-{m}-copy.nii.gz"), "wb") as f:
                    f.write(data)
            cases.append({"case_id": new, "images": {m: f"images/{new}-{m}-copy.nii.gz" for m in ("t1", "t2")},
                          "subject": f"s{i}", "session": "1"})
        m = {"name": "C", "cases": cases, **({"atlas_registered": atlas} if atlas is not None else {})}
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(m, f)
        return folder

    def plan(*args):
        from nnunet_mmpretrain.cli.plan_and_preprocess import main
        return main, ["-d", "900", "-np", "1", "--plan-only", *args]

    @case("plan: a case copied under new file names and a new id")
    def _(ws):
        folder = corpus(ws, copy_of=("c9", 0))
        return (*plan(), [os.path.join(folder, "images", "c9-t1-copy.nii.gz"), "same voxels as case 'c0'",
                          "--allow-duplicates"])

    @case("plan: one case at 100 mm spacing among 4 mm cases")
    def _(ws):
        folder = corpus(ws, n=4, spacing={2: (100.0, 100.0, 100.0)})
        return (*plan(), [os.path.join(folder, "images", "c2_t1.nii.gz"), "25x off the corpus median", "header"])

    @case("plan: atlas_registered corpus with one case stored mirrored")
    def _(ws):
        folder = corpus(ws, atlas=True, direction={1: (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)})
        return (*plan(), [os.path.join(folder, "images", "c1_t1.nii.gz"), "atlas_registered", "mirrored"])

    @case("plan: nnUNet_def_n_proc not a number")
    def _(ws):
        corpus(ws)
        ws.mp.setenv("nnUNet_def_n_proc", "abc")
        return (*plan(), ["nnUNet_def_n_proc", "'abc'"])

    @case("plan: another plan_and_preprocess is working on the corpus")
    def _(ws):
        import fcntl
        corpus(ws)
        pre = os.path.join(ws.pre, CORPUS)
        os.makedirs(pre)
        ws.lock_fd = os.open(os.path.join(pre, ".lock"), os.O_RDWR | os.O_CREAT)
        fcntl.flock(ws.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)   # what the first run holds
        return (*plan(), ["another nnUNetv2_mmpretrain_plan_and_preprocess", os.path.join(pre, ".lock")])

    # ---- bundles ---------------------------------------------------------------------------------
    def export(*args):
        from nnunet_mmpretrain.cli.export import main
        return main, list(args)

    @case("export: the disk refuses the bundle write (torch.save fails)")
    def _(ws):
        import torch
        src = tiny_bundle(ws.p("b0"))

        def full(*a, **k):
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\n"
                               "PytorchStreamWriter failed writing file data/0: file write failed")
        ws.io.setattr(torch, "save", full)
        return (*export(src, "-o", ws.p("b1")), [ws.p("b1"), "failed", "nothing was replaced"])

    @case("export: encoder_bundle.pt with one flipped bit")
    def _(ws):
        src = tiny_bundle(ws.p("b0"))
        w = os.path.join(src, "encoder_bundle.pt")
        data = bytearray(open(w, "rb").read())
        data[len(data) // 2] ^= 0x01
        os.remove(w)
        open(w, "wb").write(bytes(data))
        return (*export(src, "-o", ws.p("b1")), [w, "SHA-256 differs", "bundle.json"])

    def export_full(*args):
        from nnunet_mmpretrain.cli.export_full import main
        return main, list(args)

    @case("export_full: -o an existing folder")
    def _(ws):
        src = tiny_bundle(ws.p("b0"))
        os.makedirs(ws.p("out"))
        return (*export_full(src, "-d", "901", "-o", ws.p("out")), ["-o", ws.p("out"), "existing folder"])

    @case("export_full: -o on a read-only disk")
    def _(ws):
        src = tiny_bundle(ws.p("b0"))
        os.makedirs(ws.p("ro"))
        ws.failing_disk(ws.p("ro"), errno.EROFS)
        return (*export_full(src, "-d", "901", "-o", ws.p("ro", "full.pth")), [ws.p("ro"), "read-only"])

    # ---- prediction ------------------------------------------------------------------------------
    def model(ws, channels=("T1", "T2")):
        d = os.path.join(ws.res, "Dataset901_L", "nnUNetTrainerMMFinetune__mmPretrainPlans__3d_fullres")
        os.makedirs(os.path.join(d, "fold_0"))
        json.dump({"channel_names": {str(i): c for i, c in enumerate(channels)}, "labels": {"background": 0, "x": 1},
                   "file_ending": ".nii.gz", "numTraining": 1}, open(os.path.join(d, "dataset.json"), "w"))
        for f in ("plans.json", os.path.join("fold_0", "checkpoint_final.pth")):
            open(os.path.join(d, f), "w").write("{}")
        os.makedirs(os.path.join(ws.raw, "Dataset901_L"))
        return d

    def predict(*args):
        from nnunet_mmpretrain.cli.predict import main
        return main, ["-d", "901", "-c", "3d_fullres", *args]

    @case("predict: one channel on another grid")
    def _(ws):
        model(ws)
        img(ws.p("in", "x_0000.nii.gz"))
        img(ws.p("in", "x_0001.nii.gz"), np.ones((9, 12, 10), np.float32))
        return (*predict("-i", ws.p("in"), "-o", ws.p("out")), [ws.p("in", "x_0001.nii.gz"), "not on the grid"])

    @case("predict: --bundle whose template was replaced by a 4D file")
    def _(ws):
        model(ws)
        img(ws.p("in", "x_0000.nii.gz"))
        src = tiny_bundle(ws.p("b0"), templates=True)
        t = os.path.join(src, "templates", "template_t1.nii.gz")
        os.remove(t)
        img(t, np.random.default_rng(1).random((2, 6, 8, 7)).astype(np.float32))
        return (*predict("-i", ws.p("in"), "-o", ws.p("out"), "--bundle", src), [t, "SHA-256 differs"])
