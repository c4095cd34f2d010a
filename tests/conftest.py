"""Session fixtures: phantoms made once (cached under .cache/, never committed), nnU-Net folders
in a temporary directory, a labelled dataset planned with nnU-Net and shrunk to a tiny plan.

Nothing of nnU-Net is mocked: the fixtures call its fingerprinting, planning and preprocessing.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(REPO, ".cache", "test_phantoms")

#: the phantom set every test shares (3 mm keeps cases ~50x60x50 voxels)
PHANTOM_ARGS = dict(spacing=3.0, num_train=6, num_test=1, corpus_cases=3, cls_cases=4, seed=7)
SEG_ID, CLS_ID, CORPUS_ID = 990, 991, 992
TINY = dict(name="3d_tiny", patch_size=(32, 32, 32), features=(8, 16, 32), batch_size=2)


def _phantom_key() -> str:
    import nnunet_mmpretrain.synthetic.datasets as d
    import nnunet_mmpretrain.synthetic.phantom as p
    h = hashlib.sha256(json.dumps(PHANTOM_ARGS, sort_keys=True).encode())
    for m in (p, d):
        with open(m.__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def _make_phantoms(raw: str) -> None:
    from nnunet_mmpretrain.synthetic import datasets as ds
    a = PHANTOM_ARGS
    ds.make_segmentation_dataset(raw, SEG_ID, a["num_train"], a["num_test"], a["spacing"], a["seed"], 2)
    ds.make_corpus(raw, CORPUS_ID, a["corpus_cases"], a["spacing"], a["seed"], 2)
    ds.make_classification_dataset(raw, CLS_ID, a["cls_cases"], a["spacing"], a["seed"], 2)


@pytest.fixture(scope="session")
def phantom_raw() -> str:
    """A read-only cached nnU-Net raw folder holding the three phantom datasets."""
    folder = os.path.join(CACHE, _phantom_key())
    done = os.path.join(folder, ".complete")
    if not os.path.isfile(done):
        # each session builds in its own folder and moves it in complete (marker inside), so two
        # sessions building at once never mix or half-write the cache
        os.makedirs(CACHE, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=_phantom_key() + ".partial.", dir=CACHE)
        try:
            _make_phantoms(tmp)
            open(os.path.join(tmp, ".complete"), "w").close()
            if not os.path.isfile(done):
                shutil.rmtree(folder, ignore_errors=True)        # an incomplete leftover
                try:
                    os.replace(tmp, folder)
                except OSError:                                  # another session moved its copy in first
                    pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@pytest.fixture(scope="session")
def nnunet_dirs(tmp_path_factory, phantom_raw):
    """Fresh nnU-Net folders (raw is a copy of the cached phantoms) set in os.environ."""
    root = tmp_path_factory.mktemp("nnunet")
    raw = str(root / "raw")
    shutil.copytree(phantom_raw, raw, ignore=shutil.ignore_patterns(".complete"))
    dirs = {"nnUNet_raw": raw, "nnUNet_preprocessed": str(root / "preprocessed"),
            "nnUNet_results": str(root / "results")}
    for v in dirs.values():
        os.makedirs(v, exist_ok=True)
    from nnunet_mmpretrain.training.lookup import ext_trainer_value
    dirs["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer")) + os.pathsep + \
        os.path.join(REPO, "tests", "ext_trainers")       # test-only trainers
    old = {k: os.environ.get(k) for k in dirs}
    os.environ.update(dirs)
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    os.environ.setdefault("nnUNet_n_proc_DA", "2")
    yield dirs
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def planned_seg(nnunet_dirs):
    """The phantom segmentation dataset fingerprinted, planned and preprocessed by nnU-Net, with
    a tiny ``3d_tiny`` configuration and a one-fold split (5 train / 1 validation case)."""
    from nnunet_mmpretrain.planning.nnunet_plan import plan_and_preprocess
    plans_file = plan_and_preprocess(SEG_ID, tiny=dict(TINY))
    folder = os.path.dirname(plans_file)
    cases = sorted(f[: -len(".nii.gz")] for f in os.listdir(os.path.join(nnunet_dirs["nnUNet_raw"],
                                                                          "Dataset990_PhantomBraTS", "labelsTr")))
    with open(os.path.join(folder, "splits_final.json"), "w") as f:
        json.dump([{"train": cases[:-1], "val": cases[-1:]}], f)
    return {"plans_file": plans_file, "folder": folder, "dataset_id": SEG_ID, "cases": cases,
            **nnunet_dirs}


@pytest.fixture(scope="session")
def planned_corpus(nnunet_dirs):
    """The phantom corpus validated, fingerprinted, planned (ResEncM preset) and preprocessed by
    our command, plus a ``3d_tiny`` configuration for CPU pretraining."""
    r = run_cli(["nnUNetv2_mmpretrain_plan_and_preprocess", "-d", str(CORPUS_ID), "-np", "2"])
    pre = os.path.join(nnunet_dirs["nnUNet_preprocessed"], "Dataset992_PhantomCorpus")
    plans_file = os.path.join(pre, "mmPretrainPlans.json")
    plans = json.load(open(plans_file))
    from nnunet_mmpretrain.planning.tiny import add_tiny_configuration
    add_tiny_configuration(plans_file, **TINY)
    return {"stdout": r.stdout, "folder": pre, "plans": plans, "plans_file": plans_file,
            "data": os.path.join(pre, "mmPretrainPlans_3d_fullres"), **nnunet_dirs}


PRETRAINER = "nnUNetTrainerMMPretrain_5epochs"


def pretrain_fold(results, trainer=PRETRAINER, config="3d_tiny"):
    return os.path.join(results, "Dataset992_PhantomCorpus", f"{trainer}__mmPretrainPlans__{config}", "fold_all")


@pytest.fixture(scope="session")
def pretrained(planned_corpus):
    """Five short epochs of BrainMVP pretraining on the tiny corpus plan, through nnUNetv2_train."""
    run_cli(["nnUNetv2_train", str(CORPUS_ID), "3d_tiny", "all", "-tr", PRETRAINER, "-p", "mmPretrainPlans",
             "-device", "cpu"], env={"nnUNet_n_proc_DA": "0"})
    return {"fold": pretrain_fold(planned_corpus["nnUNet_results"]), **planned_corpus}


@pytest.fixture(scope="session")
def bundle(pretrained, tmp_path_factory):
    """The encoder bundle exported from the pretraining checkpoint."""
    folder = str(tmp_path_factory.mktemp("bundle") / "bundle")
    run_cli(["nnUNetv2_mmpretrain_export", os.path.join(pretrained["fold"], "checkpoint_final.pth"), "-o", folder])
    return folder


def run_cli(args, env=None, check=True, timeout=900):
    """Run a console command with the test environment; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e.update(env or {})
    e["PATH"] = os.path.dirname(sys.executable) + os.pathsep + e.get("PATH", "")
    r = subprocess.run(args, env=e, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
    return r


def run_main(main, args, capsys):
    """Run a console entry point in-process; (exit code, stdout, stderr)."""
    try:
        rc = main(args)
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def assert_validated_split(fold_dir, preprocessed_dataset):
    """nnU-Net's validation of ``fold_dir`` scored exactly the fold's validation cases of
    ``splits_final.json`` (what a finished ``nnUNetv2_train`` promises), with a Dice per case."""
    fold = int(os.path.basename(str(fold_dir)).split("_")[1])
    with open(os.path.join(preprocessed_dataset, "splits_final.json")) as f:
        want = sorted(json.load(f)[fold]["val"])
    with open(os.path.join(fold_dir, "validation", "summary.json")) as f:
        per_case = json.load(f)["metric_per_case"]
    got = sorted(os.path.basename(c["prediction_file"])[: -len(".nii.gz")] for c in per_case)
    assert got == want, (got, want)
    for c in per_case:
        for region, m in c["metrics"].items():
            assert 0.0 <= m["Dice"] <= 1.0 or (m["n_ref"] == 0 and m["n_pred"] == 0), (c["prediction_file"], region)

