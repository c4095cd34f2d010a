"""The bad-input catalogue: every command, handed input a hostile but realistic user would give
(wrong paths, damaged NIfTI files, NaN/Inf, 2D/4D images, empty and odd corpora, manifests and
suites with unknown keys, output equal to input, read-only and full disks), ends with exit code 2,
exactly one ``error:`` line on stderr naming the file or argument, and writes nothing.

Commands run in-process (their ``main``); read-only and full disks are simulated with a small
wrapper around ``open`` / the converters' writers that raises OSError(EROFS / ENOSPC) for paths
under the output folder (the tests may run as root, for whom chmod protects nothing). tqdm
progress bars on stderr are not messages and are not counted. Property tests of the parsers
(hypothesis) close the module.
"""
from __future__ import annotations

import os

import pytest

from bad_input_cases import CATALOGUE, Workspace


def snapshot(root: str) -> dict:
    out = {}
    for cur, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(cur, d), root) + "/"] = None
        for f in files:
            p = os.path.join(cur, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _message_lines(err: str):
    """stderr lines that are messages (tqdm's carriage-return progress bars are not)."""
    out = []
    for ln in err.splitlines():
        ln = ln.split("\r")[-1].strip()
        if ln and not ("%|" in ln and ("it/s" in ln or "s/it" in ln or "case" in ln or "?" in ln)):
            out.append(ln)
    return out


@pytest.fixture
def ws(tmp_path, monkeypatch):
    return Workspace(tmp_path, monkeypatch)


@pytest.mark.parametrize("case", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_bad_input_is_answered_in_one_line(case, ws, capsys):
    name, setup = case
    main, argv, needles = setup(ws)
    capsys.readouterr()
    before = snapshot(str(ws.root))
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    lines = _message_lines(err)
    assert e.value.code == 2, (name, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (name, n, lines[0])
    ws.restore()
    assert snapshot(str(ws.root)) == before, f"{name}: output written"


def test_catalogue_count_matches_the_docs():
    """docs/RELIABILITY.md states the count (tried / answered in one line)."""
    import re
    assert len(CATALOGUE) == len({c[0] for c in CATALOGUE})
    doc = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                            "RELIABILITY.md")).read()
    tried, answered = map(int, re.search(r"\*\*(\d+) bad inputs over \d+ commands; (\d+) are answered", doc).groups())
    assert tried == answered == len(CATALOGUE)


def test_planning_accepts_n_proc_da_zero(ws, capsys):
    """nnUNet_n_proc_DA=0 is valid for nnU-Net training (augmentation in the main process); nnU-Net's
    planner would hand it to torch.set_num_threads and fail. Planning a corpus works with it."""
    import json
    import numpy as np
    import release_fakes as F
    from nnunet_mmpretrain.cli.plan_and_preprocess import main
    folder = os.path.join(ws.raw, "Dataset900_C")
    cases = []
    for i, c in enumerate("ab"):
        for j, m in enumerate(("t1", "t2")):
            F.write(os.path.join(folder, "images", f"{c}_{m}.nii.gz"),
                    np.random.default_rng(2 * i + j).random((24, 28, 26)).astype(np.float32) + 1)
        cases.append({"case_id": c, "images": {m: f"images/{c}_{m}.nii.gz" for m in ("t1", "t2")}})
    json.dump({"name": "C", "cases": cases}, open(os.path.join(folder, "manifest.json"), "w"))
    ws.mp.setenv("nnUNet_n_proc_DA", "0")
    assert main(["-d", "900", "-np", "1", "--plan-only", "--add-config", "3d_t", "--patch", "16", "16", "16"]) == 0
    plans = json.load(open(os.path.join(ws.pre, "Dataset900_C", "mmPretrainPlans.json")))
    assert plans["configurations"]["3d_t"]["patch_size"] == [16, 16, 16]
    assert os.environ["nnUNet_n_proc_DA"] == "0"


# --------------------------------------------------------------------------------------------
# property tests: random input gives a parsed result or our own clear error, nothing else
# --------------------------------------------------------------------------------------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_keys = st.sampled_from(["format", "name", "cases", "case_id", "images", "t1", "T2w", "flair", "sources",
                         "atlas_registered", "subject", "session", "source", "datasets", "methods", "folds",
                         "seeds", "schedule", "corpus", "epochs", "x"]) | st.text(max_size=6)
_scalars = st.none() | st.booleans() | st.integers(-3, 1000) | st.floats(allow_nan=True) | st.text(max_size=12)
_json = st.recursive(_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_keys, kids, max_size=5),
                     max_leaves=25)
_case = st.fixed_dictionaries({"case_id": st.sampled_from(["a", "b", "../x", "", "c.1"]) | st.text(max_size=5),
                               "images": st.dictionaries(st.sampled_from(["t1", "T1w", "t2", "adc", "bogus"]),
                                                         st.sampled_from(["a.nii.gz", "/abs/b.nii", "", "a.nii.gz"])
                                                         | _scalars, max_size=3)},
                              optional={"subject": _scalars, "source": _scalars, "extra": _scalars})
_manifest = st.fixed_dictionaries({"cases": st.lists(_case, max_size=4)},
                                  optional={"name": _scalars, "sources": _json, "atlas_registered": _scalars,
                                            "format": _scalars, "extra": _scalars}) | _json
PROP = settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@PROP
@given(_manifest)
def test_manifest_parser_property(data):
    from nnunet_mmpretrain.corpus.manifest import ManifestError, parse_manifest
    from nnunet_mmpretrain.modalities import UnknownModalityError
    try:
        m = parse_manifest(data, root="/corpus", where="m.json")
    except (ManifestError, UnknownModalityError) as e:
        assert str(e).strip() and "\n" not in str(e).strip()
        return
    assert m.cases and all(c.images for c in m.cases)


@PROP
@given(_json | st.fixed_dictionaries({"name": _scalars, "datasets": _json, "folds": _json, "seeds": _json,
                                      "schedule": _json, "methods": _json, "corpus": _json}))
def test_suite_parser_property(data):
    from nnunet_mmpretrain.benchmark.suite import SuiteError, parse_suite
    try:
        parse_suite(data, "suite.json")
    except SuiteError as e:
        assert str(e).startswith("suite.json")


_cell = st.text(alphabet=st.sampled_from(list("ab01,;\"\n \t-_xyCN")), max_size=8)


@PROP
@given(st.lists(st.lists(_cell, min_size=0, max_size=4), max_size=6), st.sampled_from([",", "\t"]))
def test_label_table_parsers_property(tmp_path_factory, rows, sep):
    from nnunet_mmpretrain.classification.labels import ClassLabelError, load_class_table
    from nnunet_mmpretrain.conversion.csv_labels import read_table
    from nnunet_mmpretrain.conversion.summary import ConversionError
    d = tmp_path_factory.mktemp("tab")
    p = os.path.join(str(d), "t.csv" if sep == "," else "t.tsv")
    with open(p, "w") as f:
        f.write("\n".join(sep.join(r) for r in rows))
    try:
        load_class_table(p, ["a", "b"])
    except ClassLabelError as e:
        assert p in str(e)
    try:
        read_table(p)
    except ConversionError as e:
        assert p in str(e)
