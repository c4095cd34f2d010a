"""Catalogue cases of the planning and phantom commands (see bad_input_cases.py)."""
from __future__ import annotations

import errno
import json
import os

import numpy as np

CORPUS = "Dataset900_C"
LABELLED = "Dataset901_L"


def register(case, img, damage):  # noqa: C901 - one table of cases
    def corpus(ws, cases=None, extra=None, write=True):
        """raw/Dataset900_C: two cases (t1, t2) and a manifest; ``cases`` overrides the case list."""
        folder = os.path.join(ws.raw, CORPUS)
        os.makedirs(os.path.join(folder, "images"), exist_ok=True)
        if cases is None:
            cases = [{"case_id": c, "images": {m: f"images/{c}_{m}.nii.gz" for m in ("t1", "t2")}} for c in "ab"]
        if write:
            for c in cases:
                for i, p in enumerate(c.get("images", {}).values()):
                    fp = os.path.join(folder, p)
                    if not os.path.exists(fp):
                        img(fp, np.random.default_rng(i).random((8, 12, 10)).astype(np.float32) + 1)
        m = {"name": "C", "cases": cases, **(extra or {})}
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(m, f)
        return folder

    def plan(*args):
        from nnunet_mmpretrain.cli.plan_and_preprocess import main
        return main, ["-d", "900", "-np", "1", "--plan-only", *args]

    @case("plan: nnUNet_preprocessed unset")
    def _(ws):
        corpus(ws)
        ws.mp.delenv("nnUNet_preprocessed")
        return (*plan(), ["nnUNet_preprocessed"])

    @case("plan: unknown dataset id")
    def _(ws):
        return (*plan()[:1], ["-d", "950", "-np", "1"], ["950"])

    @case("plan: dataset without manifest.json")
    def _(ws):
        os.makedirs(os.path.join(ws.raw, CORPUS))
        return (*plan(), ["manifest.json"])

    @case("plan: manifest with an unknown key")
    def _(ws):
        corpus(ws, extra={"atlas_registerd": True})
        return (*plan(), ["'atlas_registerd'", "manifest.json"])

    @case("plan: manifest case with an unknown key")
    def _(ws):
        corpus(ws, cases=[{"case_id": "a", "images": {"t1": "images/a_t1.nii.gz"}, "labels": "x"}])
        return (*plan(), ["'labels'", "case 'a'"])

    @case("plan: manifest not JSON")
    def _(ws):
        folder = corpus(ws)
        open(os.path.join(folder, "manifest.json"), "w").write("{cases: [")
        return (*plan(), ["manifest.json", "not valid JSON"])

    @case("plan: empty corpus")
    def _(ws):
        corpus(ws, cases=[])
        return (*plan(), ["lists no cases"])

    @case("plan: one scan under two case ids")
    def _(ws):
        corpus(ws, cases=[{"case_id": c, "images": {"t1": "images/a_t1.nii.gz"}} for c in ("a", "a_copy")])
        return (*plan(), ["images/a_t1.nii.gz", "'a_copy'", "duplicated"])

    @case("plan: case id with a path separator")
    def _(ws):
        corpus(ws, cases=[{"case_id": "../a", "images": {"t1": "images/a_t1.nii.gz"}}])
        return (*plan(), ["'../a'", "invalid case id"])

    @case("plan: case id twice")
    def _(ws):
        corpus(ws, cases=[{"case_id": "a", "images": {"t1": f"images/{x}_t1.nii.gz"}} for x in "ab"])
        return (*plan(), ["'a'", "twice"])

    @case("plan: unknown modality")
    def _(ws):
        corpus(ws, cases=[{"case_id": "a", "images": {"spectro": "images/a_s.nii.gz"}}])
        return (*plan(), ["spectro"])

    def bad_scan(ws, fn):
        folder = corpus(ws)
        return fn(os.path.join(folder, "images", "a_t2.nii.gz"))

    for how in ("truncated", "corrupt", "short"):
        @case(f"plan: {how} .nii.gz in the corpus")
        def _(ws, how=how):
            p = bad_scan(ws, lambda p: damage(p, how))
            return (*plan(), [p, "again"])

    def arr_case(name, arr, needle):
        @case(f"plan: {name}")
        def _(ws):
            p = bad_scan(ws, lambda p: img(p, arr))
            return (*plan(), [p, needle])

    nan = np.ones((8, 12, 10), np.float32)
    nan[1, 1, 1] = np.nan
    inf = np.ones((8, 12, 10), np.float32)
    inf[2, 2, 2] = np.inf
    arr_case("NaN voxels", nan, "NaN")
    arr_case("Inf voxels", inf, "Inf")
    arr_case("4D scan", np.ones((2, 8, 12, 10), np.float32), "4D")
    arr_case("2D scan", np.ones((12, 10), np.float32), "2D")
    arr_case("all-zero scan", np.zeros((8, 12, 10), np.float32), "all zero")
    arr_case("scan on another grid", np.ones((9, 12, 10), np.float32) + np.arange(10), "--resample")

    @case("plan: scan file missing")
    def _(ws):
        folder = corpus(ws)
        os.remove(os.path.join(folder, "images", "b_t1.nii.gz"))
        return (*plan(), [os.path.join(folder, "images", "b_t1.nii.gz"), "not found"])

    @case("plan: --patch not divisible by the strides")
    def _(ws):
        corpus(ws)
        return (*plan("--add-config", "3d_t", "--patch", "30", "30", "30"), ["--patch", "divisible", "multiple"])

    @case("plan: negative --features")
    def _(ws):
        corpus(ws)
        return (*plan("--add-config", "3d_t", "--features", "8", "-16", "32"), ["--features"])

    @case("plan: zero --features")
    def _(ws):
        corpus(ws)
        return (*plan("--add-config", "3d_t", "--features", "0"), ["--features"])

    @case("plan: --batch 0")
    def _(ws):
        corpus(ws)
        return (*plan("--add-config", "3d_t", "--batch", "0"), ["--batch"])

    @case("plan: --patch without --add-config")
    def _(ws):
        corpus(ws)
        return (*plan("--patch", "64", "64", "64"), ["--patch", "--add-config"])

    @case("plan: -np 0")
    def _(ws):
        corpus(ws)
        return (*plan()[:1], ["-d", "900", "-np", "0"], ["-np"])

    @case("plan: nnUNet_n_proc_DA not a number")
    def _(ws):
        corpus(ws)
        ws.mp.setenv("nnUNet_n_proc_DA", "two")
        return (*plan(), ["nnUNet_n_proc_DA", "'two'"])

    for err, needle in ((errno.EROFS, "read-only"), (errno.ENOSPC, "no space left"), (errno.EACCES, "permission")):
        @case(f"plan: nnUNet_preprocessed {errno.errorcode[err]}")
        def _(ws, err=err, needle=needle):
            corpus(ws)
            ws.failing_disk(ws.pre, err)
            return (*plan(), [needle, ws.pre])

    @case("plan: nnUNet_preprocessed is a file")
    def _(ws):
        corpus(ws)
        open(ws.p("prefile"), "w").write("x")
        ws.mp.setenv("nnUNet_preprocessed", ws.p("prefile"))
        return (*plan(), [ws.p("prefile"), "existing file"])

    @case("plan: --like plans file missing")
    def _(ws):
        corpus(ws)
        return (*plan("--like", ws.p("nope.json")), [ws.p("nope.json"), "does not exist"])

    @case("plan: --like not JSON")
    def _(ws):
        corpus(ws)
        open(ws.p("plans.json"), "w").write("{")
        return (*plan("--like", ws.p("plans.json")), [ws.p("plans.json"), "not a valid plans JSON"])

    # ---- tiny_plans (labelled dataset) -------------------------------------------------------
    def labelled(ws):
        return labelled_dataset(ws, img)

    def tiny(*args):
        from nnunet_mmpretrain.cli.tiny_plans import main
        return main, ["-d", "901", "-np", "1", *args]

    @case("tiny_plans: --patch not divisible by the strides")
    def _(ws):
        labelled(ws)
        return (*tiny("--patch", "30", "30", "30"), ["--patch", "divisible"])

    @case("tiny_plans: zero --features")
    def _(ws):
        labelled(ws)
        return (*tiny("--features", "8", "0"), ["--features"])

    @case("tiny_plans: unknown dataset id")
    def _(ws):
        return (*tiny()[:1], ["-d", "950", "-np", "1"], ["950"])

    @case("tiny_plans: truncated label file")
    def _(ws):
        p = damage(os.path.join(labelled(ws), "labelsTr", "y.nii.gz"), "truncated")
        return (*tiny(), [p, "truncated"])

    @case("tiny_plans: nnUNet_n_proc_DA negative")
    def _(ws):
        labelled(ws)
        ws.mp.setenv("nnUNet_n_proc_DA", "-2")
        return (*tiny(), ["nnUNet_n_proc_DA", "'-2'"])

    @case("tiny_plans: nnUNet_raw unset")
    def _(ws):
        ws.mp.delenv("nnUNet_raw")
        return (*tiny(), ["nnUNet_raw"])

    @case("tiny_plans: nnUNet_preprocessed read-only")
    def _(ws):
        labelled(ws)
        ws.failing_disk(ws.pre, errno.EROFS)
        return (*tiny(), ["read-only", ws.pre])

    # ---- make_phantoms ---------------------------------------------------------------------
    def phantoms(*args):
        from nnunet_mmpretrain.cli.make_phantoms import main
        return main, list(args)

    @case("make_phantoms: --raw-dir an existing file")
    def _(ws):
        open(ws.p("f"), "w").write("x")
        return (*phantoms("--raw-dir", ws.p("f")), ["--raw-dir", ws.p("f")])

    @case("make_phantoms: --spacing 0")
    def _(ws):
        return (*phantoms("--raw-dir", ws.raw, "--spacing", "0"), ["--spacing"])

    @case("make_phantoms: unknown --what")
    def _(ws):
        return (*phantoms("--raw-dir", ws.raw, "--what", "seg,labels"), ["--what"])

    @case("make_phantoms: dataset id 0")
    def _(ws):
        return (*phantoms("--raw-dir", ws.raw, "--seg-id", "0", "--what", "seg"), ["1..999"])

    @case("make_phantoms: read-only --raw-dir")
    def _(ws):
        ws.failing_disk(ws.raw, errno.EROFS)
        return (*phantoms("--raw-dir", ws.raw, "--what", "seg"), ["read-only", ws.raw])

    @case("make_phantoms: non-empty dataset folder without --overwrite")
    def _(ws):
        from nnunet_mmpretrain.conversion.paths import dataset_folder_name
        import inspect
        from nnunet_mmpretrain.synthetic import datasets as ds
        name = inspect.signature(ds.make_segmentation_dataset).parameters["name"].default
        d = os.path.join(ws.raw, dataset_folder_name(990, name))
        os.makedirs(d)
        open(os.path.join(d, "keep.txt"), "w").write("x")
        return (*phantoms("--raw-dir", ws.raw, "--what", "seg", "--spacing", "8", "--num-train", "1"),
                [d, "--overwrite"])

    from bad_input_cases_run import register as register_run
    register_run(case, img, labelled)


def labelled_dataset(ws, img):
    """raw/Dataset901_L: two labelled one-channel cases and dataset.json."""
    folder = os.path.join(ws.raw, LABELLED)
    for c in ("x", "y"):
        img(os.path.join(folder, "imagesTr", f"{c}_0000.nii.gz"))
        img(os.path.join(folder, "labelsTr", f"{c}.nii.gz"), (np.arange(960).reshape(8, 12, 10) % 2).astype(np.uint8))
    json.dump({"channel_names": {"0": "T1"}, "labels": {"background": 0, "a": 1}, "numTraining": 2,
               "file_ending": ".nii.gz"}, open(os.path.join(folder, "dataset.json"), "w"))
    return folder
