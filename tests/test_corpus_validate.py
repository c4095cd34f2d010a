import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mmpretrain.corpus.manifest import (CorpusCase, CorpusManifest, ManifestError, load_manifest,
                                               save_manifest)
from nnunet_mmpretrain.corpus.loading import load_case_on_common_grid
from nnunet_mmpretrain.corpus.validate import (CorpusValidationError, ValidationReport, filtered_manifest,
                                               reference_modality, validate_corpus)
from nnunet_mmpretrain.modalities import UnknownModalityError

SIZE_ZYX = (8, 12, 10)  # SimpleITK size 10x12x8


def _write(path, array_zyx, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None):
    img = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    sitk.WriteImage(img, str(path))
    return str(path)


def _noise(seed=0, shape=SIZE_ZYX):
    return np.random.default_rng(seed).random(shape).astype(np.float32) + 0.1


def _corpus(tmp_path, cases):
    """cases: {case_id: {modality: file name}} -> manifest saved in tmp_path and loaded back."""
    m = CorpusManifest(name="tiny", cases=[CorpusCase(cid, dict(imgs)) for cid, imgs in cases.items()])
    save_manifest(m, str(tmp_path))
    return load_manifest(str(tmp_path))


def _good_case(tmp_path, cid, mods=("t1", "t2"), seed=0):
    files = {}
    for i, m in enumerate(mods):
        _write(tmp_path / f"{cid}_{m}.nii.gz", _noise(seed * 10 + i))
        files[m] = f"{cid}_{m}.nii.gz"
    return files


def _raises(manifest, **kw):
    with pytest.raises(CorpusValidationError) as e:
        validate_corpus(manifest, progress=False, **kw)
    return str(e.value), e.value.report


# ---- clean input -------------------------------------------------------------------------
def test_phantom_corpus_validates_clean(tmp_path):
    from nnunet_mmpretrain.synthetic.datasets import make_corpus
    folder = make_corpus(str(tmp_path), 992, cases_per_source=2, spacing=6.0, num_processes=1)
    manifest = load_manifest(folder)
    report = validate_corpus(manifest, num_processes=2, progress=False)  # spawn pool path
    assert report.ok == [c.case_id for c in manifest.cases] and len(report.ok) == 4
    assert report.bad == {} and report.resample == {} and report.single_modality_cases == []
    assert report.modalities_per_case["brats_0000"] == ["flair", "t1", "t1c", "t2"]
    assert report.modalities_per_case["ixi_0000"] == ["t1", "t2", "pd"]
    assert set(report.reference.values()) == {"t1"}
    assert report.scans_per_modality() == {"flair": 2, "t1": 4, "t1c": 2, "t2": 4, "pd": 2}
    assert "4 cases checked, 4 ok, 0 bad" in report.summary()
    report.raise_if_bad()  # no-op
    assert [c.case_id for c in filtered_manifest(manifest, report).cases] == report.ok
    assert json.loads(json.dumps(report.to_dict()))["modalities_per_case"] == report.modalities_per_case  # round trip


def test_single_modality_case_is_counted_not_bad(tmp_path):
    man = _corpus(tmp_path, {"a": _good_case(tmp_path, "a"), "b": _good_case(tmp_path, "b", ("flair",), 1)})
    report = validate_corpus(man, progress=False)
    assert report.ok == ["a", "b"] and report.single_modality_cases == ["b"]
    assert report.reference == {"a": "t1", "b": "flair"}
    assert "1 with a single modality" in report.summary()


def test_reference_modality_choice():
    assert reference_modality(["t2", "flair", "t1"]) == "t1"
    assert reference_modality(["pd", "t2", "t1c"]) == "t1c"  # vocabulary order without t1
    assert reference_modality(["T2w", "PD"]) == "t2"


# ---- bad manifests (fail at parse) -------------------------------------------------------
def test_unknown_modality_fails_at_manifest_parse(tmp_path):
    raw = {"cases": [{"case_id": "a", "images": {"t1": "a_t1.nii.gz", "spectro": "a_s.nii.gz"}}]}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(UnknownModalityError) as e:
        load_manifest(str(tmp_path / "manifest.json"))
    msg = str(e.value)
    assert "unknown modality 'spectro'" in msg and "case 'a'" in msg
    assert "Known modalities: flair, t1, t1c, t2, mra, pd, dwi, adc" in msg


def test_empty_manifest(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "x", "cases": []}))
    with pytest.raises(ManifestError, match="lists no cases"):
        load_manifest(str(tmp_path))
    msg, _ = _raises(CorpusManifest(name="empty", cases=[]))
    assert "lists no cases" in msg


# ---- bad files -----------------------------------------------------------------------------
def test_missing_file(tmp_path):
    files = _good_case(tmp_path, "a")
    files["flair"] = "a_flair_missing.nii.gz"
    man = _corpus(tmp_path, {"a": files, "b": _good_case(tmp_path, "b")})
    msg, report = _raises(man)
    path = os.path.join(str(tmp_path), "a_flair_missing.nii.gz")
    assert path in msg and "flair: file not found" in msg
    assert "--skip-bad" in msg and "fix" in msg.lower()
    assert report.bad["a"] == [(path, "flair: file not found")] and report.ok == ["b"]


def test_corrupt_file(tmp_path):
    files = _good_case(tmp_path, "a")
    (tmp_path / "a_t2.nii.gz").write_bytes(b"this is not a NIfTI file" * 20)
    msg, _ = _raises(_corpus(tmp_path, {"a": files}))
    assert "a_t2.nii.gz: t2: cannot be read by SimpleITK" in msg


def _damage(path, how):
    import gzip
    data = open(path, "rb").read()
    if how == "truncated_gz":  # SimpleITK reads this file, filling the missing voxels with 0
        data = data[: len(data) // 2]
    elif how == "flipped_byte":
        b = bytearray(data)
        b[len(b) // 2] ^= 0xFF
        data = bytes(b)
    elif how == "short_payload":  # a complete gzip stream of a file cut short
        data = gzip.compress(gzip.decompress(data)[:-200])
    open(path, "wb").write(data)


@pytest.mark.parametrize("how", ["truncated_gz", "flipped_byte", "short_payload"])
def test_damaged_nifti_fails_validation(tmp_path, how):
    files = _good_case(tmp_path, "a")
    _damage(str(tmp_path / "a_t2.nii.gz"), how)
    msg, report = _raises(_corpus(tmp_path, {"a": files, "b": _good_case(tmp_path, "b")}))
    path = os.path.join(str(tmp_path), "a_t2.nii.gz")
    (p, reason), = report.bad["a"]
    assert p == path and ("truncated" in reason or "damaged" in reason) and "again" in reason
    assert report.ok == ["b"] and path in msg


def test_truncated_uncompressed_nifti(tmp_path):
    files = _good_case(tmp_path, "a")
    _write(tmp_path / "a_t2.nii", _noise(3))
    files["t2"] = "a_t2.nii"
    raw = (tmp_path / "a_t2.nii").read_bytes()
    (tmp_path / "a_t2.nii").write_bytes(raw[:-100])
    msg, _ = _raises(_corpus(tmp_path, {"a": files}))
    assert "a_t2.nii: t2: is truncated" in msg


def test_all_zero_image(tmp_path):
    files = _good_case(tmp_path, "a")
    _write(tmp_path / "a_t2.nii.gz", np.zeros(SIZE_ZYX, np.float32))
    msg, _ = _raises(_corpus(tmp_path, {"a": files}))
    assert "a_t2.nii.gz: t2: is all zero (no foreground)" in msg


def test_constant_image(tmp_path):
    files = _good_case(tmp_path, "a")
    _write(tmp_path / "a_t1.nii.gz", np.full(SIZE_ZYX, 7, np.int16))
    msg, _ = _raises(_corpus(tmp_path, {"a": files}))
    assert "t1: is constant (every voxel = 7; no foreground)" in msg


@pytest.mark.parametrize("ext", [".nii.gz", ".mha"])  # SimpleITK reads NIfTI NaN as 0: raw scan
def test_nan_voxels(tmp_path, ext):
    files = _good_case(tmp_path, "a")
    arr = _noise(5)
    arr[1, 2, 3] = np.nan
    arr[2, 2, 2] = np.nan
    arr[0, 0, 0] = np.inf
    files["t2"] = "a_t2" + ext
    _write(tmp_path / files["t2"], arr)
    msg, _ = _raises(_corpus(tmp_path, {"a": files}))
    assert f"a_t2{ext}: t2: has 2 NaN and 1 Inf voxels (of 960)" in msg


def test_4d_file(tmp_path):
    files = _good_case(tmp_path, "a")
    vols = [sitk.GetImageFromArray(_noise(i)) for i in range(3)]
    sitk.WriteImage(sitk.JoinSeries(vols), str(tmp_path / "a_t2.nii.gz"))
    msg, _ = _raises(_corpus(tmp_path, {"a": files}))
    assert ("t2: is 4D (shape 10x12x8x3); expected one 3D volume per modality — split it into one "
            "file per channel") in msg


def test_2d_file(tmp_path):
    files = _good_case(tmp_path, "a")
    _write(tmp_path / "a_t2.nii.gz", _noise(3)[0], spacing=(1.0, 1.0), origin=(0.0, 0.0))
    msg, _ = _raises(_corpus(tmp_path, {"a": files}))
    assert "t2: is 2D (shape 10x12); expected one 3D volume per modality" in msg


def test_same_file_for_two_modalities(tmp_path):
    files = _good_case(tmp_path, "a")
    files["flair"] = files["t1"]
    msg, _ = _raises(_corpus(tmp_path, {"a": files}))
    assert "is the same file as" in msg


# ---- grids ----------------------------------------------------------------------------------
BOX = np.array([[2.5, 6.5], [3.5, 7.5], [1.5, 4.5]])  # physical x, y, z extent (mm) of a bright cube


def _cube_image(path, size_xyz, spacing, origin, direction):
    """Image whose voxels with physical centre inside BOX are 100, others small noise."""
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size_xyz], indexing="ij"), -1).reshape(-1, 3)
    phys = np.asarray(origin) + (idx * np.asarray(spacing)) @ np.asarray(direction).reshape(3, 3).T
    inside = np.all((phys >= BOX[:, 0]) & (phys <= BOX[:, 1]), axis=1).reshape(size_xyz)
    arr_xyz = np.where(inside, 100.0, 0.0).astype(np.float32)
    return _write(path, arr_xyz.transpose(2, 1, 0), spacing, origin, direction)


IDENT = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
FLIP_X = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_grid_mismatch_then_resample(tmp_path):
    # t1: 10x12x8 at 1 mm from the origin; t2: finer, shifted and with x flipped, covering t1
    _cube_image(tmp_path / "a_t1.nii.gz", (10, 12, 8), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENT)
    _cube_image(tmp_path / "a_t2.nii.gz", (26, 30, 18), (0.5, 0.5, 0.6), (10.2, -1.3, -0.7), FLIP_X)
    files = {"a": {"t1": "a_t1.nii.gz", "t2": "a_t2.nii.gz"}, "b": _good_case(tmp_path, "b")}
    man = _corpus(tmp_path, files)

    msg, report = _raises(man)
    assert report.ok == ["b"] and list(report.bad) == ["a"]
    assert "t2 size 26x30x18 vs t1 10x12x8" in msg
    assert "t2 spacing (0.5, 0.5, 0.6) vs t1 (1, 1, 1)" in msg
    assert "t2 origin (10.2, -1.3, -0.7) vs t1 (0, 0, 0)" in msg and "t2 direction" in msg
    assert "resample_to_first=True" in msg and "--resample" in msg
    assert os.path.join(str(tmp_path), "a_t2.nii.gz") in msg

    report = validate_corpus(man, resample_to_first=True, progress=False)
    assert report.ok == ["a", "b"] and report.bad == {}
    assert report.resample == {"a": ["t2"]} and report.reference["a"] == "t1"
    assert "a: t2 -> t1" in report.summary()

    imgs = load_case_on_common_grid(man, "a")
    assert list(imgs) == ["t1", "t2"]
    t1, t2 = imgs["t1"], imgs["t2"]
    for img in (t1, t2):
        assert img.GetSize() == (10, 12, 8) and img.GetSpacing() == (1.0, 1.0, 1.0)
        assert img.GetOrigin() == (0.0, 0.0, 0.0) and img.GetDirection() == IDENT
        assert img.GetPixelID() == sitk.sitkFloat32
    a1 = sitk.GetArrayFromImage(t1).transpose(2, 1, 0)  # x, y, z == physical mm here
    a2 = sitk.GetArrayFromImage(t2).transpose(2, 1, 0)
    assert a1[3:7, 4:8, 2:5].min() == 100 and a1.sum() == 100 * 4 * 4 * 3
    # resampled t2: the cube lands where it is in physical space
    core = a2[4:6, 5:7, 3:4]          # >= 1 mm inside the box
    assert np.allclose(core, 100, atol=1e-3)
    far = np.ones_like(a2, bool)
    far[2:8, 3:9, 1:6] = False        # >= 1 mm outside the box
    assert np.abs(a2[far]).max() < 1e-3
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in a2.shape], indexing="ij"), -1)
    centroid = (grid * a2[..., None]).reshape(-1, 3).sum(0) / a2.sum()
    assert np.allclose(centroid, BOX.mean(1), atol=0.3)
    # the reference image itself is untouched; an explicit reference works too
    imgs2 = load_case_on_common_grid(man, man.cases[0], reference_modality="T2w")
    assert imgs2["t2"].GetSize() == (26, 30, 18) and imgs2["t1"].GetSize() == (26, 30, 18)


def test_no_overlap_is_bad_even_with_resample(tmp_path):
    files = _good_case(tmp_path, "a")
    _write(tmp_path / "a_t2.nii.gz", _noise(9), origin=(500.0, 0.0, 0.0))
    man = _corpus(tmp_path, {"a": files, "b": _good_case(tmp_path, "b")})
    msg, _ = _raises(man, resample_to_first=True)
    assert "t2 does not overlap t1 in physical space" in msg


def test_tiny_header_roundoff_is_tolerated(tmp_path):
    files = _good_case(tmp_path, "a")
    _write(tmp_path / "a_t2.nii.gz", _noise(4), spacing=(1.0, 1.0, 1.0 + 1e-5), origin=(1e-5, 0.0, 0.0))
    report = validate_corpus(_corpus(tmp_path, {"a": files}), progress=False)
    assert report.ok == ["a"] and report.resample == {}


# ---- stop / skip -----------------------------------------------------------------------------
def _mixed(tmp_path):
    cases = {f"good{i}": _good_case(tmp_path, f"good{i}", seed=i) for i in range(2)}
    cases["zero"] = _good_case(tmp_path, "zero", seed=7)
    _write(tmp_path / "zero_t1.nii.gz", np.zeros(SIZE_ZYX, np.float32))
    cases["gone"] = {"t1": "gone_t1.nii.gz"}
    return _corpus(tmp_path, cases)


def test_stop_mode_raises_listing_all_bad_cases(tmp_path):
    man = _mixed(tmp_path)
    msg, report = _raises(man, on_error="stop")
    assert "2 of 4 cases have unusable files" in msg
    assert f"zero: {os.path.join(str(tmp_path), 'zero_t1.nii.gz')}: t1: is all zero" in msg
    assert f"gone: {os.path.join(str(tmp_path), 'gone_t1.nii.gz')}: t1: file not found" in msg
    assert "--skip-bad" in msg
    assert report.ok == ["good0", "good1"]
    # the summary has one line per bad file
    lines = report.summary().splitlines()
    assert sum("zero_t1.nii.gz" in ln for ln in lines) == 1 and sum("gone_t1" in ln for ln in lines) == 1


def test_skip_mode_leaves_bad_cases_out(tmp_path, caplog):
    man = _mixed(tmp_path)
    with caplog.at_level("WARNING", logger="nnunet_mmpretrain.corpus.validate"):
        report = validate_corpus(man, on_error="skip", progress=False)
    assert report.ok == ["good0", "good1"] and sorted(report.bad) == ["gone", "zero"]
    err = caplog.text
    assert "WARNING: leaving 2 bad case(s) out" in err and "zero_t1.nii.gz" in err
    kept = filtered_manifest(man, report)
    assert [c.case_id for c in kept.cases] == ["good0", "good1"] and kept.root == man.root
    assert len(man.cases) == 4  # the original is untouched
    with pytest.raises(CorpusValidationError, match="--skip-bad"):
        report.raise_if_bad()


def test_skip_mode_with_nothing_left_raises(tmp_path):
    cases = {"zero": _good_case(tmp_path, "zero")}
    _write(tmp_path / "zero_t2.nii.gz", np.zeros(SIZE_ZYX, np.float32))
    msg, _ = _raises(_corpus(tmp_path, cases), on_error="skip")
    assert "no usable cases" in msg and "zero_t2.nii.gz" in msg


def test_bad_on_error_value(tmp_path):
    man = _corpus(tmp_path, {"a": _good_case(tmp_path, "a")})
    with pytest.raises(ValueError, match="on_error"):
        validate_corpus(man, on_error="ignore")


def test_empty_report_raises_no_usable_cases():
    with pytest.raises(CorpusValidationError, match="no usable cases"):
        ValidationReport(corpus_name="x").raise_if_bad()
