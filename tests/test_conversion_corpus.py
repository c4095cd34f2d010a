"""Pretraining corpus converters: manifests load back with the right modalities per case."""
from __future__ import annotations

import os

import SimpleITK as sitk

from nnunet_mmpretrain.conversion import corpus_brats, folder_corpus, ixi, ucsf_pdgm
import release_fakes as F
from nnunet_mmpretrain.corpus.manifest import load_manifest


def by_id(manifest):
    return {c.case_id: c for c in manifest.cases}


def test_ixi_groups_subjects_and_keeps_grids(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_ixi(rel)
    s = ixi.convert(rel, raw, progress=False)
    assert len(s.converted) == 3
    assert all("DTI" in r for r in s.skipped_files.values()) and len(s.skipped_files) == 3
    m = load_manifest(os.path.join(raw, "Dataset551_IXICorpus"))
    cases = by_id(m)
    assert cases["IXI002-Guys-0828"].modalities == ["t1", "t2", "pd"]
    assert cases["IXI012-HH-1211"].modalities == ["t1", "t2", "mra", "pd"]
    assert cases["IXI013-IOP-0856"].modalities == ["t2", "pd"]
    assert cases["IXI002-Guys-0828"].subject == "IXI002" and cases["IXI002-Guys-0828"].source == "ixi"
    assert m.atlas_registered is False  # the modalities keep their own grids
    c = cases["IXI002-Guys-0828"]
    assert os.path.samefile(m.path(c, "t2"), os.path.join(rel, "IXI-T2", "IXI002-Guys-0828-T2.nii.gz"))


def test_ixi_resample_to_t1(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_ixi(rel, per_modality_folders=False)
    s = ixi.convert(rel, raw, resample_to_t1=True, progress=False)
    assert sorted(s.converted) == ["IXI002-Guys-0828", "IXI012-HH-1211"]
    assert "no T1" in s.problems["IXI013-IOP-0856"]
    m = load_manifest(os.path.join(raw, "Dataset551_IXICorpus"))
    c = by_id(m)["IXI012-HH-1211"]
    t1 = sitk.ReadImage(m.path(c, "t1"))
    for mod in ("t2", "pd", "mra"):
        img = sitk.ReadImage(m.path(c, mod))
        assert img.GetSize() == t1.GetSize() and img.GetSpacing() == t1.GetSpacing()


def test_ucsf_pdgm(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = F.fake_ucsf_pdgm(rel, n=2)
    ucsf_pdgm.convert(rel, raw, bias_corrected=True, progress=False)
    m = load_manifest(os.path.join(raw, "Dataset552_UCSFPDGMCorpus"))
    cases = by_id(m)
    assert cases[ids[0]].modalities == ["flair", "t1", "t1c", "t2", "dwi", "adc"]
    assert cases[ids[1]].modalities == ["flair", "t1", "t1c", "t2", "adc"]  # no DWI in this case
    src = os.path.join(rel, "UCSF-PDGM-v3", f"{ids[0]}_nifti")
    assert os.path.samefile(m.path(cases[ids[0]], "flair"), os.path.join(src, f"{ids[0]}_FLAIR_bias.nii.gz"))
    assert os.path.samefile(m.path(cases[ids[0]], "t1c"), os.path.join(src, f"{ids[0]}_T1c.nii.gz"))


def test_brats_corpus_and_merging_sources(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    F.fake_brats2021(rel, n=2, with_seg=False, omit={1: "flair"})
    F.fake_brats2023(rel, "GLI", n=1)
    s = corpus_brats.convert(rel, raw, dataset_id=560, name="MixCorpus", progress=False)
    assert len(s.converted) == 3
    m = load_manifest(os.path.join(raw, "Dataset560_MixCorpus"))
    cases = by_id(m)
    assert cases["BraTS2021_00000"].modalities == ["flair", "t1", "t1c", "t2"]
    assert cases["BraTS2021_00001"].modalities == ["t1", "t1c", "t2"]
    assert cases["BraTS-GLI-00000-000"].source == "brats2023_gli"
    assert m.atlas_registered is True
    # a second source into the same corpus folder keeps the first one
    F.fake_ixi(str(tmp_path / "ixi"))
    ixi.convert(str(tmp_path / "ixi"), raw, dataset_id=560, name="MixCorpus", progress=False)
    m = load_manifest(os.path.join(raw, "Dataset560_MixCorpus"))
    assert m.counts()["cases_per_source"] == {"brats2021": 2, "brats2023_gli": 1, "ixi": 3}
    assert set(m.sources) == {"brats2021", "brats2023_gli", "ixi"} and m.atlas_registered is False
    s = corpus_brats.convert(rel, raw, dataset_id=560, name="MixCorpus", progress=False)
    assert len(s.converted) == 0 and len(s.already_done) == 3
    assert len(load_manifest(os.path.join(raw, "Dataset560_MixCorpus")).cases) == 6


def test_folder_corpus(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    expected = F.fake_subject_folders(rel)
    s = folder_corpus.convert(rel, raw, source="mysite", progress=False)
    assert sorted(s.converted) == sorted(expected)
    reasons = {os.path.basename(k): v for k, v in s.skipped_files.items()}
    assert set(reasons) == {"sub-01_seg.nii.gz", "swi.nii.gz"} and all("vocabulary" in r for r in reasons.values())
    m = load_manifest(os.path.join(raw, "Dataset553_FolderCorpus"))
    from nnunet_mmpretrain.modalities import sort_modalities
    for cid, mods in expected.items():
        assert by_id(m)[cid].modalities == sort_modalities(mods)
        assert by_id(m)[cid].source == "mysite"
    assert s.files["rewritten"] == 1  # sub-02/t2.nii -> .nii.gz
    assert sitk.ReadImage(m.path(by_id(m)["sub-02"], "t2")).GetSize() == (12, 12, 10)


def test_ucsf_pdgm_follow_ups_grouped_under_their_patient(tmp_path):
    rel, raw = str(tmp_path / "rel"), str(tmp_path / "raw")
    ids = F.fake_ucsf_pdgm(rel, n=2, follow_ups={0: ["FU003d", "FU128d"]}, version="v5")
    assert ids == ["UCSF-PDGM-0004", "UCSF-PDGM-0004_FU003d", "UCSF-PDGM-0004_FU128d", "UCSF-PDGM-0005"]
    s = ucsf_pdgm.convert(rel, raw, progress=False)
    assert sorted(s.converted) == ids
    assert any("2 follow-up exam(s) of 1 patient(s)" in n for n in s.notes)
    cases = by_id(load_manifest(os.path.join(raw, "Dataset552_UCSFPDGMCorpus")))
    assert {c: (cases[c].subject, cases[c].session) for c in ids} == {
        "UCSF-PDGM-0004": ("UCSF-PDGM-0004", "baseline"), "UCSF-PDGM-0004_FU003d": ("UCSF-PDGM-0004", "FU003d"),
        "UCSF-PDGM-0004_FU128d": ("UCSF-PDGM-0004", "FU128d"), "UCSF-PDGM-0005": ("UCSF-PDGM-0005", "baseline")}
    assert cases["UCSF-PDGM-0004_FU003d"].modalities == ["flair", "t1", "t1c", "t2", "dwi", "adc"]
    # with a case prefix only the case ids change: the exams stay grouped
    s = ucsf_pdgm.convert(rel, raw, dataset_id=561, name="Mix", case_prefix="ucsf_", progress=False)
    cases = by_id(load_manifest(os.path.join(raw, "Dataset561_Mix")))
    assert cases["ucsf_UCSF-PDGM-0004_FU128d"].subject == cases["ucsf_UCSF-PDGM-0004"].subject == "UCSF-PDGM-0004"
