"""Classification on nnU-Net's preprocessing: labels, metrics (sklearn), network pieces, and the
phantom grading task (dataset 991, 4 cases) trained from scratch and from the pretrained bundle
through ``nnUNetv2_train`` with tiny transfer plans, then summarised and predicted by our commands."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from conftest import CLS_ID, CORPUS_ID, run_cli

CLS = "Dataset991_PhantomGrade"
PLANS = "mmPretrainPlans"
FAST = {"nnUNet_n_proc_DA": "0", "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------- metrics
def test_metrics_equal_sklearn_on_a_known_confusion():
    from sklearn import metrics as skm
    from nnunet_mmpretrain.classification.metrics import classification_metrics
    # known confusion (rows true, columns predicted): [[3, 1], [2, 4]]
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    pred = np.array([0, 0, 0, 1, 0, 0, 1, 1, 1, 1])
    p1 = np.array([.1, .2, .3, .6, .4, .45, .7, .8, .9, .55])
    probs = np.stack([1 - p1, p1], 1)
    assert (probs.argmax(1) == pred).all()
    m = classification_metrics(y, probs)
    assert m["confusion_matrix"] == [[3, 1], [2, 4]]
    assert m["accuracy"] == pytest.approx(0.7) == skm.accuracy_score(y, pred)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2) == skm.balanced_accuracy_score(y, pred)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p1))
    assert m["per_class"]["1"]["recall"] == pytest.approx(4 / 6)
    # three classes: one-vs-rest AUC
    rng = np.random.default_rng(0)
    y3 = np.array([0, 1, 2] * 5)
    p3 = rng.dirichlet(np.ones(3), size=15)
    m3 = classification_metrics(y3, p3)
    assert m3["roc_auc"] == pytest.approx(skm.roc_auc_score(y3, p3, multi_class="ovr"))
    assert m3["confusion_matrix"] == skm.confusion_matrix(y3, p3.argmax(1)).tolist()
    # a single class: AUC undefined, said so
    one = classification_metrics([1, 1], np.array([[.2, .8], [.6, .4]]))
    assert one["roc_auc"] is None and "single class" in one["roc_auc_note"]


def test_metrics_are_delegated_to_sklearn(monkeypatch):
    from nnunet_mmpretrain.classification import metrics as M
    for name, val in [("accuracy_score", 0.11), ("balanced_accuracy_score", 0.22), ("f1_score", 0.33),
                      ("roc_auc_score", 0.44)]:
        monkeypatch.setattr(M.skm, name, lambda *a, _v=val, **k: _v)
    m = M.classification_metrics([0, 1, 1], np.array([[.9, .1], [.2, .8], [.6, .4]]))
    assert (m["accuracy"], m["balanced_accuracy"], m["macro_f1"], m["roc_auc"]) == (0.11, 0.22, 0.33, 0.44)


def test_summary_and_cross_validation_format_is_stable(tmp_path):
    from nnunet_mmpretrain.classification import metrics as M
    names = {0: "low", 1: "high"}
    info = dict(dataset="D", trainer="T", plans="P", configuration="C", input_size=[8, 8, 8], checkpoint="x")
    folds = {"0": ([0, 1, 1, 0], [[.8, .2], [.3, .7], [.6, .4], [.9, .1]]),
             "1": ([1, 0, 1, 0], [[.2, .8], [.7, .3], [.1, .9], [.4, .6]])}
    for f, (y, p) in folds.items():
        s = M.write_fold_summary(str(tmp_path / f"fold_{f}"), [f"c{f}{i}" for i in range(4)], y, np.array(p), names,
                                 dict(info, fold=f))
        assert tuple(s) == M.SUMMARY_KEYS and tuple(s["metrics"]) == M.METRIC_KEYS
        assert json.load(open(tmp_path / f"fold_{f}" / "summary.json")) == s
    cv = M.cross_validation_summary(str(tmp_path))
    assert tuple(cv) == M.CV_KEYS and cv["folds"] == ["fold_0", "fold_1"]
    assert set(cv["mean"]) == set(M.SCALAR_METRICS) == set(cv["std"]) == set(cv["per_fold"])
    acc = [cv["per_fold"]["accuracy"][f] for f in cv["folds"]]
    assert acc == [0.75, 0.75] and cv["mean"]["accuracy"] == 0.75 and cv["std"]["accuracy"] == 0.0
    auc = [cv["per_fold"]["roc_auc"][f] for f in cv["folds"]]
    assert cv["std"]["roc_auc"] == pytest.approx(np.std(auc, ddof=1))
    assert cv["pooled"]["confusion_matrix"] == [[3, 1], [1, 3]]
    assert "+-" in M.format_cv_table(cv)


# ---------------------------------------------------------------- labels
GOOD_CASES = ["a", "b", "c", "d"]
DJ = {"classification": {"file": "classes.csv", "classes": {"0": "LGG", "1": "HGG"}}}


@pytest.mark.parametrize("text,dj,needle", [
    ("", DJ, "is empty"),
    ("case,label\n", DJ, "no rows"),
    ("subject,grade\na,1\n", DJ, "header 'case,label'"),
    ("case,label\na,1\nb,0\nc,1\n", DJ, "no row for 1 case(s)"),
    ("case,label\na,1\nb,0\nc,1\nd,0\ne,1\n", DJ, "not in the dataset"),
    ("case,label\na,1\nb,1\nc,1\nd,1\n", DJ, "single class"),
    ("case,label\na,1\nb,0\nc,GBM\nd,0\n", DJ, "unknown class 'GBM'"),
    ("case,label\na,1\nb,0\nc,2\nd,0\n", DJ, "unknown class '2'"),
    ("case,label\na,1\na,0\nc,1\nd,0\n", DJ, "twice"),
    ("case,label\na,1\nb,\nc,1\nd,0\n", DJ, "no label"),
    ("case,label\na,0\nb,0\nc,2\nd,2\n", {}, "have no case"),
])
def test_bad_label_files_are_refused_with_one_line(tmp_path, text, dj, needle):
    from nnunet_mmpretrain.classification.labels import ClassLabelError, load_class_table
    path = tmp_path / "classes.csv"
    path.write_text(text)
    with pytest.raises(ClassLabelError) as e:
        load_class_table(str(path), GOOD_CASES, dj)
    msg = str(e.value)
    assert needle in msg and str(path) in msg and "\n" not in msg and ":" in msg


def test_good_label_files_by_id_and_by_name(tmp_path):
    from nnunet_mmpretrain.classification.labels import load_class_table
    p = tmp_path / "classes.csv"
    p.write_text("case,label,grade\na,HGG,x\nb,0,y\nc,1,z\nd,LGG,w\n")
    t = load_class_table(str(p), GOOD_CASES, DJ)
    assert t.labels == {"a": 1, "b": 0, "c": 1, "d": 0} and t.names == {0: "LGG", 1: "HGG"}
    p.write_text("case;label\na;MCI\nb;CN\nc;MCI\nd;AD\n")          # no declared classes: sorted names
    t = load_class_table(str(p), GOOD_CASES, {})
    assert t.names == {0: "AD", 1: "CN", 2: "MCI"} and t.labels["a"] == 2


# ---------------------------------------------------------------- network and data pieces
def test_input_size_crop_pad_and_balanced_sampling():
    from nnunet_mmpretrain.classification.data import balanced_probabilities, centre_bbox, crop_or_pad, stratified_splits
    from nnunet_mmpretrain.classification.network import plan_input_size
    assert plan_input_size([[50, 61, 49], [52, 60, 51]], [4, 4, 4]) == [52, 64, 52]
    a = np.arange(2 * 5 * 8 * 3, dtype=np.float32).reshape(2, 5, 8, 3) + 1
    out = crop_or_pad(a, (7, 6, 3))
    assert out.shape == (2, 7, 6, 3)
    assert (out[:, 0] == 0).all() and (out[:, 6] == 0).all()     # padded 1 voxel each side on axis 0
    assert np.array_equal(out[:, 1:6], a[:, :, 1:7])              # centre crop 8 -> 6 on axis 1
    assert centre_bbox((5,), (8,)) == [[-1, 7]]
    p = balanced_probabilities(["a", "b", "c", "d"], {"a": 0, "b": 0, "c": 0, "d": 1})
    assert p[3] == pytest.approx(0.5) and p[:3].sum() == pytest.approx(0.5)
    labels = {f"c{i:02d}": int(i < 4) for i in range(12)}              # 4 of class 1, 8 of class 0
    splits = stratified_splits(labels, n_splits=5)
    assert len(splits) == 4 and sorted(c for s in splits for c in s["val"]) == sorted(labels)
    assert all(sum(labels[c] for c in s["val"]) == 1 and not set(s["val"]) & set(s["train"]) for s in splits)


@pytest.mark.parametrize("features", ["bottleneck", "decoder"])
def test_classifier_network_shapes(features):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_mmpretrain.classification.network import EncoderClassifier
    seg = PlainConvUNet(4, 3, (8, 16, 32), torch.nn.Conv3d, 3, (1, 2, 2), 2, 3, 2, norm_op=torch.nn.InstanceNorm3d,
                        nonlin=torch.nn.LeakyReLU)
    net = EncoderClassifier(seg, 3, features, dropout=0.1, hidden=16)
    assert net.forward_features(torch.zeros(2, 4, 16, 20, 12)).shape[:2] == (2, 8 if features == "decoder" else 32)
    assert net(torch.zeros(2, 4, 16, 20, 12)).shape == (2, 3)
    assert net.key_to_stem == seg.key_to_stem
    assert all(k.startswith(("encoder.", "decoder.", "head.")) for k in net.state_dict())


# ---------------------------------------------------------------- the phantom grading task through nnU-Net
@pytest.fixture(scope="session")
def cls_planned(nnunet_dirs, bundle):
    """Dataset 991 with the pretraining topology (tiny), the bundle in its plans, two folds."""
    run_cli(["nnUNetv2_mmpretrain_transfer_plans", "-s", str(CORPUS_ID), "-t", str(CLS_ID), "-c", "3d_tiny",
             "--bundle", bundle, "--preprocess", "-np", "2"], env=FAST)
    folder = os.path.join(nnunet_dirs["nnUNet_preprocessed"], CLS)
    rows = list(csv.DictReader(open(os.path.join(nnunet_dirs["nnUNet_raw"], CLS, "classes.csv"))))
    hi = sorted(r["case"] for r in rows if r["label"] == "1")
    lo = sorted(r["case"] for r in rows if r["label"] == "0")
    splits = [{"train": [hi[0], lo[0]], "val": [hi[1], lo[1]]}, {"train": [hi[1], lo[1]], "val": [hi[0], lo[0]]}]
    with open(os.path.join(folder, "splits_final.json"), "w") as f:
        json.dump(splits, f)
    return {"bundle": bundle, "folder": folder, "splits": splits, **nnunet_dirs}


def _results(d, trainer):
    return os.path.join(d["nnUNet_results"], CLS, f"{trainer}__{PLANS}__3d_tiny")


def _train(trainer, fold=0, env=None):
    return run_cli(["nnUNetv2_train", str(CLS_ID), "3d_tiny", str(fold), "-tr", trainer, "-p", PLANS, "-device", "cpu"],
                   env={**FAST, **(env or {})})


def test_scratch_and_pretrained_runs_through_nnunetv2_train(cls_planned, tmp_path, capsys):
    from nnunet_mmpretrain.classification import metrics as M
    _train("nnUNetTrainerMMClassifier_scratch_smoke")
    _train("nnUNetTrainerMMClassifier_smoke")
    scratch = _results(cls_planned, "nnUNetTrainerMMClassifier_scratch_smoke")
    pre = _results(cls_planned, "nnUNetTrainerMMClassifier_smoke")
    assert not os.path.exists(os.path.join(scratch, "fold_0", "pretrained_weights_report.json"))
    rep = json.load(open(os.path.join(pre, "fold_0", "pretrained_weights_report.json")))
    assert rep["strategy"] == "modality" and len(rep["loaded"]) > 10
    assert all(k.startswith("head.") for k in rep["random"])
    for folder in (scratch, pre):
        s = json.load(open(os.path.join(folder, "fold_0", "summary.json")))
        assert tuple(s) == M.SUMMARY_KEYS and tuple(s["metrics"]) == M.METRIC_KEYS
        assert s["num_cases"] == 2 and s["classes"] == {"0": "low grade", "1": "high grade"}
        assert sorted(s["class_counts"].values()) == [1, 1]
        cases, y, p = M.read_probabilities(os.path.join(folder, "fold_0", M.PROB_FILE))
        assert sorted(cases) == sorted(cls_planned["splits"][0]["val"]) and np.allclose(p.sum(1), 1, atol=1e-4)
        ck = torch.load(os.path.join(folder, "fold_0", "checkpoint_final.pth"), weights_only=True)
        assert ck["classification"]["input_size"] == s["input_size"]
    # cross-validation summary command, in-process (one fold here; the format test covers several)
    from nnunet_mmpretrain.cli.classify import main_predict, main_summary
    args = ["-d", str(CLS_ID), "-c", "3d_tiny", "-tr", "nnUNetTrainerMMClassifier_smoke", "-p", PLANS]
    assert main_summary(args) == 0
    cv = json.load(open(os.path.join(pre, "cv_summary.json")))
    assert tuple(cv) == M.CV_KEYS and cv["folds"] == ["fold_0"] and "balanced_accuracy" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main_summary(args + ["-f", "0", "1"])
    assert e.value.code == 2 and "fold(s) 1" in capsys.readouterr().err
    # prediction of new cases from raw images = the fold's validation probabilities (same preprocessing)
    out = tmp_path / "probs.csv"
    val = cls_planned["splits"][0]["val"]
    img = tmp_path / "images"
    img.mkdir()
    raw = os.path.join(cls_planned["nnUNet_raw"], CLS, "imagesTr")
    for f in os.listdir(raw):
        if f.rsplit("_", 1)[0] in val:
            os.symlink(os.path.join(raw, f), img / f)
    assert main_predict(["-i", str(img), "-o", str(out), "-f", "0", "-device", "cpu"] + args) == 0
    rows = {r["case"]: r for r in csv.DictReader(open(out))}
    assert sorted(rows) == sorted(val)
    cases, _, p = M.read_probabilities(os.path.join(pre, "fold_0", M.PROB_FILE))
    for c, pv in zip(cases, p):
        assert [float(rows[c]["prob_0"]), float(rows[c]["prob_1"])] == pytest.approx(list(pv), abs=1e-3)
        assert rows[c]["class"] in ("low grade", "high grade")


def test_bad_classes_csv_stops_nnunetv2_train_before_any_work(cls_planned, tmp_path, monkeypatch, capsys):
    """nnUNetv2_train's entry point (in-process): exit code 2, one error line, no fold folder."""
    from nnunetv2.run.run_training import run_training_entry
    bad = tmp_path / "classes.csv"
    bad.write_text("case,label\n" + "".join(f"{c},1\n" for s in cls_planned["splits"][0].values() for c in s))
    monkeypatch.setenv("nnUNet_mmpretrain_classes", str(bad))
    monkeypatch.setattr("sys.argv", ["nnUNetv2_train", str(CLS_ID), "3d_tiny", "1", "-tr",
                                     "nnUNetTrainerMMClassifier_scratch_smoke", "-p", PLANS, "-device", "cpu"])
    with pytest.raises(SystemExit) as e:
        run_training_entry()
    assert e.value.code == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and str(bad) in err[0] and "single class" in err[0]
    assert not os.path.exists(os.path.join(_results(cls_planned, "nnUNetTrainerMMClassifier_scratch_smoke"), "fold_1"))


def _trainer(name):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(str(CLS_ID), "3d_tiny", 0, name, PLANS, device=torch.device("cpu"))


def test_injected_encoder_equals_bundle_and_linear_probe_trains_only_the_head(cls_planned, tmp_path, monkeypatch):
    from nnunet_mmpretrain.training.finetune import FinetuneError
    from nnunet_mmpretrain.transfer.bundle import load_bundle
    tr = _trainer("nnUNetTrainerMMClassifier_linearProbe_smoke")
    tr.initialize()
    tr.output_folder = str(tmp_path)
    tr.load_pretrained_encoder()
    b = load_bundle(cls_planned["bundle"])
    sd = tr.network.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in b["encoder"].items())
    trainable = {k for k, p in tr.network.named_parameters() if p.requires_grad}
    assert trainable and all(k.startswith("head.") for k in trainable)
    assert sum(len(g["params"]) for g in tr.optimizer.param_groups) == len(trainable)
    # the linear probe needs a bundle
    monkeypatch.setenv("nnUNet_mmpretrain_bundle", "")
    tr.plans_manager.plans.setdefault("mmpretrain_transfer", {})["bundle"] = None
    with pytest.raises(FinetuneError, match="needs a pretrained encoder bundle"):
        tr.load_pretrained_encoder()
