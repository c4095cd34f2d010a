"""Catalogue cases of the prediction, classification, benchmark and export commands (see
bad_input_cases.py)."""
from __future__ import annotations

import json
import os

LABELLED = "Dataset901_L"


def register(case, img, labelled):  # noqa: C901 - one table of cases
    # ---- predict / classify ------------------------------------------------------------------
    def model(ws, tr="nnUNetTrainerMMFinetune", trained=True):
        """A results folder as nnU-Net leaves it (placeholder files: no case gets that far)."""
        labelled(ws)
        d = os.path.join(ws.res, LABELLED, f"{tr}__mmPretrainPlans__3d_fullres")
        os.makedirs(os.path.join(d, "fold_0"))
        if trained:
            for f in ("dataset.json", "plans.json", os.path.join("fold_0", "checkpoint_final.pth")):
                open(os.path.join(d, f), "w").write("{}")
        os.makedirs(ws.p("in"))
        img(ws.p("in", "x_0000.nii.gz"))
        return d

    def predict(ws, *args):
        from nnunet_mmpretrain.cli.predict import main
        return main, ["-d", "901", "-c", "3d_fullres", *args]

    @case("predict: -i missing")
    def _(ws):
        model(ws)
        return (*predict(ws, "-i", ws.p("nope"), "-o", ws.p("out")), ["-i", ws.p("nope")])

    @case("predict: -o an existing file")
    def _(ws):
        model(ws)
        open(ws.p("out"), "w").write("x")
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("out")), ["-o", ws.p("out"), "existing file"])

    @case("predict: -o equal to -i")
    def _(ws):
        model(ws)
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("in")), ["-o", "input"])

    @case("predict: unknown dataset")
    def _(ws):
        model(ws)
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("out"))[:1],
                ["-d", "955", "-c", "3d_fullres", "-i", ws.p("in"), "-o", ws.p("out")], ["955"])

    @case("predict: no trained model")
    def _(ws):
        model(ws)
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("out"), "-tr", "nnUNetTrainerOther"), ["nnUNetTrainerOther"])

    @case("predict: --bundle a file")
    def _(ws):
        model(ws)
        open(ws.p("b.pth"), "w").write("x")
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("out"), "--bundle", ws.p("b.pth")), ["--bundle", ws.p("b.pth")])

    @case("predict: nnUNet_n_proc_DA not a number")
    def _(ws):
        model(ws)
        ws.mp.setenv("nnUNet_n_proc_DA", "many")
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("out")), ["nnUNet_n_proc_DA", "'many'"])

    @case("predict: model folder without plans.json")
    def _(ws):
        os.remove(os.path.join(model(ws), "plans.json"))
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("out")), ["plans.json", "nnUNetv2_train"])

    @case("predict: fold without its checkpoint")
    def _(ws):
        model(ws)
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("out"), "-f", "0", "1"), ["fold_1", "-f"])

    @case("predict: --bundle a folder that is not a bundle")
    def _(ws):
        model(ws)
        os.makedirs(ws.p("notabundle"))
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("out"), "--bundle", ws.p("notabundle")),
                ["--bundle", ws.p("notabundle"), "nnUNetv2_mmpretrain_export"])

    @case("predict: bad -f")
    def _(ws):
        model(ws)
        return (*predict(ws, "-i", ws.p("in"), "-o", ws.p("out"), "-f", "zero"), ["-f"])

    def classify(*args):
        from nnunet_mmpretrain.cli.classify import main_predict
        return main_predict, list(args)

    @case("classify: -i missing")
    def _(ws):
        d = model(ws, "nnUNetTrainerMMClassifier")
        return (*classify("-i", ws.p("nope"), "-o", ws.p("p.csv"), "--folder", d), [ws.p("nope")])

    @case("classify: -o a folder")
    def _(ws):
        d = model(ws, "nnUNetTrainerMMClassifier")
        return (*classify("-i", ws.p("in"), "-o", ws.p("in"), "--folder", d), ["-o", ws.p("in"), "folder"])

    @case("classify: --folder missing")
    def _(ws):
        model(ws, "nnUNetTrainerMMClassifier")
        return (*classify("-i", ws.p("in"), "-o", ws.p("p.csv"), "--folder", ws.p("nofold")), [ws.p("nofold")])

    @case("classify: folder that is not a trained model")
    def _(ws):
        d = model(ws, "nnUNetTrainerMMClassifier", trained=False)
        return (*classify("-i", ws.p("in"), "-o", ws.p("p.csv"), "--folder", d, "-device", "cpu", "-f", "0"),
                [d, "dataset.json"])

    @case("classify: nnUNet_results unset")
    def _(ws):
        model(ws, "nnUNetTrainerMMClassifier")
        ws.mp.delenv("nnUNet_results")
        return (*classify("-i", ws.p("in"), "-o", ws.p("p.csv"), "-d", "901"), ["nnUNet_results"])

    @case("classify_summary: no folds with a summary")
    def _(ws):
        from nnunet_mmpretrain.cli.classify import main_summary
        d = model(ws, "nnUNetTrainerMMClassifier")
        return main_summary, ["--folder", d], [d]

    # ---- benchmark / export --------------------------------------------------------------------
    def bench(*args):
        from nnunet_mmpretrain.cli.benchmark import main
        return main, list(args)

    @case("benchmark: suite with an unknown key")
    def _(ws):
        from nnunet_mmpretrain.benchmark.suite import PLANS_DIR
        s = json.load(open(os.path.join(PLANS_DIR, "phantom-smoke.json")))
        s["seed"] = 3
        json.dump(s, open(ws.p("suite.json"), "w"))
        return (*bench(ws.p("suite.json"), "--dry-run", "--out", ws.p("bo")), [ws.p("suite.json"), "seed"])

    @case("benchmark: suite not JSON")
    def _(ws):
        open(ws.p("suite.json"), "w").write("{")
        return (*bench(ws.p("suite.json"), "--out", ws.p("bo")), [ws.p("suite.json"), "not valid JSON"])

    @case("benchmark: unknown suite name")
    def _(ws):
        return (*bench("no-such-suite", "--out", ws.p("bo")), ["no-such-suite"])

    @case("benchmark: --leaderboard-only without results")
    def _(ws):
        os.makedirs(ws.p("bo"))
        return (*bench("phantom-smoke", "--leaderboard-only", "--out", ws.p("bo")), [ws.p("bo"), "suite.json"])

    @case("export: a file that is not a checkpoint")
    def _(ws):
        from nnunet_mmpretrain.cli.export import main
        open(ws.p("notes.pth"), "w").write("hello")
        return main, [ws.p("notes.pth"), "-o", ws.p("bundle")], [ws.p("notes.pth")]
