"""The multi-site phantoms: each site effect does what docs/PHANTOMS.md says, and the lesions are
not decided by one modality's intensity."""
import json
import os

import numpy as np
import pytest

from nnunet_mmpretrain.synthetic.multisite import LESION_SIGNAL, NORMAL, make_site_case, vary_anatomy
from nnunet_mmpretrain.synthetic.phantom import SIGNAL, atlas_grid
from nnunet_mmpretrain.synthetic.sites import SITES, bias_field, contrast_curve, rician_noise, thick_slices

SEG = ("t1", "t1c", "t2", "flair")


def test_bias_field_is_smooth_positive_and_multiplies_the_image():
    rng = np.random.default_rng(0)
    field = bias_field((60, 70, 50), 3.0, 0.25, 80.0, rng)
    assert field.dtype == np.float32 and (field > 0).all()
    log = np.log(field)
    assert log.std() == pytest.approx(0.25, rel=0.1)                 # strength = std of the log field
    # smooth: neighbouring voxels (3 mm apart) differ by a small part of the field's spread,
    # where independent noise of the same spread would differ by ~1.4 x its std
    step = np.abs(np.diff(log, axis=0)).mean()
    assert step < 0.1 * log.std()
    img = np.random.default_rng(1).uniform(100, 200, field.shape).astype(np.float32)
    np.testing.assert_allclose((img * field) / img, field, rtol=1e-6)
    assert np.allclose(bias_field((8, 8, 8), 3.0, 0.0, 80.0, rng), 1.0)
    with pytest.raises(ValueError):
        bias_field((8, 8, 8), 3.0, -0.1, 80.0, rng)


def test_rician_noise_level_is_measured_back_from_the_image():
    rng = np.random.default_rng(0)
    flat = np.full((40, 40, 40), 200.0, np.float32)
    noisy = rician_noise(flat, 8.0, rng)
    assert noisy.std() == pytest.approx(8.0, rel=0.05)                # high SNR: Gaussian of std sigma
    assert noisy.mean() == pytest.approx(np.sqrt(200.0 ** 2 + 8.0 ** 2), rel=0.005)
    dark = rician_noise(np.zeros_like(flat), 8.0, rng)               # zero signal: Rayleigh
    assert dark.min() >= 0 and dark.mean() == pytest.approx(8.0 * np.sqrt(np.pi / 2), rel=0.03)
    assert np.array_equal(rician_noise(flat, 0.0, rng), flat)


def _rise(profile: np.ndarray) -> int:
    """Voxels between 10 % and 90 % of a rising edge."""
    lo, hi = profile.min(), profile.max()
    p = (profile - lo) / (hi - lo)
    return int(np.argmax(p >= 0.9) - np.argmax(p >= 0.1))


def test_thick_slices_blur_across_the_slices_only():
    vol = np.zeros((20, 20, 60), np.float32)
    vol[:, :, 30:] = 100.0                        # an edge across the slices (z)
    vol[10:, :, :] += 50.0                        # an edge in plane (x)
    out = thick_slices(vol, spacing=1.0, slice_mm=6.0, axis=2)
    assert out.shape == vol.shape and out.dtype == np.float32
    assert _rise(vol[5, 5, :]) <= 1 and _rise(out[5, 5, :]) >= 4     # through-plane edge spread over ~a slice
    assert _rise(out[:, 5, 45]) <= 1                                 # in-plane edge still sharp
    assert out[5, 5, :].mean() == pytest.approx(vol[5, 5, :].mean(), rel=0.05)   # partial volume keeps the mean
    assert np.array_equal(thick_slices(vol, 1.0, 1.0), vol)           # no thicker than the grid: unchanged
    # noise is added to the acquired slices, so it is correlated across the interpolated ones
    rng = np.random.default_rng(0)
    noisy = thick_slices(np.full((30, 30, 60), 100, np.float32), 1.0, 6.0,
                         on_acquired=lambda a: rician_noise(a, 5.0, rng))
    dz = np.corrcoef(noisy[:, :, 20].ravel(), noisy[:, :, 21].ravel())[0, 1]
    dx = np.corrcoef(noisy[10, :, :].ravel(), noisy[11, :, :].ravel())[0, 1]
    assert dz > 0.5 and abs(dx) < 0.1


def test_contrast_curve_is_monotone_and_keeps_the_reference():
    s = np.linspace(0, 1.2, 200).astype(np.float32)
    for g in (0.7, 1.0, 1.3):
        out = contrast_curve(s, g)
        assert (np.diff(out) >= 0).all()
        assert contrast_curve(np.array([0.6], np.float32), g)[0] == pytest.approx(0.6)
    assert not np.allclose(contrast_curve(s, 1.3), s)
    with pytest.raises(ValueError):
        contrast_curve(s, 0.0)


def test_lesion_signals_lie_inside_normal_tissue_in_every_modality():
    for m in SEG:
        normal = [SIGNAL[m][t] for t in NORMAL]
        for comp, v in LESION_SIGNAL[m].items():
            assert min(normal) <= v <= max(normal), (m, comp, v, normal)


@pytest.fixture(scope="module")
def lesion_cases():
    cases = [make_site_case(seed, SITES[site], 3.0) for site in ("A", "D") for seed in (7, 11, 17)]
    assert all(c["label"].any() for c in cases)
    return cases


def test_single_modality_lesion_overlaps_normal_tissue(lesion_cases):
    """No modality decides a voxel alone: in each one most lesion voxels lie inside the normal
    brain's intensity range (1st-99th percentile), and no single modality ranks lesion above normal
    voxels with an AUC of 0.95 (what a threshold on that modality could at best achieve)."""
    from sklearn.metrics import roc_auc_score
    for c in lesion_cases:
        brain = c["images"]["t1"] > 0
        y = c["label"][brain] > 0
        X = np.stack([c["images"][m][brain] for m in SEG], 1)
        X = (X - X.mean(0)) / X.std(0)
        single = []
        for j in range(4):
            lo, hi = np.percentile(X[~y, j], [1, 99])
            assert ((X[y, j] >= lo) & (X[y, j] <= hi)).mean() > 0.5, (c["site"], SEG[j])
            auc = roc_auc_score(y, X[:, j])
            single.append(max(auc, 1 - auc))
        assert max(single) < 0.95, (c["site"], single)


def test_sites_differ_in_modalities_resolution_and_scale():
    assert all(SITES[s].modalities == SEG for s in "ABCD")
    assert SITES["E"].modalities == ("t1", "t2", "pd") and not SITES["E"].lesions
    assert SITES["F"].modalities == ("flair",)
    a, c = make_site_case(5, SITES["A"], 3.0), make_site_case(5, SITES["C"], 3.0)
    assert set(make_site_case(5, SITES["F"], 3.0)["images"]) == {"flair"}
    assert not make_site_case(5, SITES["E"], 3.0)["label"].any()
    brain = a["images"]["t1"] > 0
    # same subject (seed), other scanner: other units, blurrier across slices (6 mm) than in plane
    assert a["images"]["t1"][brain].mean() / c["images"]["t1"][brain].mean() > 1.5
    np.testing.assert_array_equal(a["label"], c["label"])

    def grad(img, ax):
        return np.abs(np.diff(img, axis=ax))[brain[:-1] if ax == 0 else (brain[:, :-1] if ax == 1 else brain[:, :, :-1])].mean()
    ratio = lambda im: grad(im, 2) / grad(im, 0)  # noqa: E731
    assert ratio(c["images"]["t2"]) < 0.85 * ratio(a["images"]["t2"])


def test_anatomy_varies_and_tissue_fractions_stay_a_partition():
    atlas = atlas_grid(3.0)
    maps = {k: getattr(atlas, k) for k in ("t1", "gm", "wm", "csf", "mask")}
    out = vary_anatomy(maps, 3.0, atrophy=0.4, ventricle_mm=5.0)
    before = maps["gm"] + maps["wm"] + maps["csf"]
    np.testing.assert_allclose(out["gm"] + out["wm"] + out["csf"], before, atol=1e-5)
    assert out["csf"].sum() > 1.2 * maps["csf"].sum() and out["gm"].sum() < maps["gm"].sum()
    same = vary_anatomy(maps, 3.0, atrophy=0.0, ventricle_mm=0.0)
    np.testing.assert_allclose(same["csf"], maps["csf"], atol=1e-6)
    # lesion-free subjects exist, and several lesions per subject
    labels = [make_site_case(s, SITES["B"], 4.0)["label"] for s in range(14)]
    assert any(not lab.any() for lab in labels) and any(lab.any() for lab in labels)


def test_site_datasets_and_corpus_layout(tmp_path):
    from nnunet_mmpretrain.corpus.manifest import load_manifest
    from nnunet_mmpretrain.synthetic.datasets import make_site_corpus, make_site_dataset
    seg = make_site_dataset(str(tmp_path), 993, {"A": 1, "C": 1}, spacing=6.0, num_processes=1)
    pool = make_site_dataset(str(tmp_path), 994, {"A": 1}, spacing=6.0, num_processes=1, name="Pool", kind=40,
                             prefix="pool_")
    assert sorted(os.listdir(os.path.join(seg, "labelsTr"))) == ["A_0000.nii.gz", "C_0000.nii.gz"]
    assert os.listdir(os.path.join(pool, "labelsTr")) == ["pool_A_0000.nii.gz"]
    dj = json.load(open(os.path.join(seg, "dataset.json")))
    assert dj["numTraining"] == 2 and set(dj["sites"]) == {"A", "C"}
    import nibabel as nib
    a_seg = nib.load(os.path.join(seg, "imagesTr", "A_0000_0000.nii.gz")).get_fdata()
    a_pool = nib.load(os.path.join(pool, "imagesTr", "pool_A_0000_0000.nii.gz")).get_fdata()
    assert not np.array_equal(a_seg, a_pool)                          # other subjects
    corpus = make_site_corpus(str(tmp_path), 995, {"E": 1, "F": 1}, spacing=6.0, num_processes=1)
    man = load_manifest(os.path.join(corpus, "manifest.json"))
    assert {c.case_id: sorted(c.images) for c in man.cases} == {"corpus_E_0000": ["pd", "t1", "t2"],
                                                               "corpus_F_0000": ["flair"]}
    assert set(man.sources) == {"site_E", "site_F"}
    with pytest.raises(ValueError, match="site E acquires"):
        make_site_dataset(str(tmp_path), 996, {"E": 1}, spacing=6.0, num_processes=1)
