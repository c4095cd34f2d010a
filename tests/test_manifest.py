import json
import os

import pytest

from nnunet_mmpretrain.corpus.manifest import (CorpusCase, CorpusManifest, ManifestError, load_manifest,
                                               save_manifest)


def test_roundtrip_normalises_aliases(tmp_path):
    m = CorpusManifest(name="x", cases=[CorpusCase("a1", {"t1": "a_t1.nii.gz", "t2": "/abs/a_t2.nii.gz"}, source="s")])
    save_manifest(m, str(tmp_path))
    back = load_manifest(str(tmp_path))
    assert back.cases[0].modalities == ["t1", "t2"]
    assert back.path(back.cases[0], "t1") == os.path.join(str(tmp_path), "a_t1.nii.gz")
    assert back.path(back.cases[0], "t2") == "/abs/a_t2.nii.gz"
    raw = {"cases": [{"case_id": "b", "images": {"T1n": "x.nii.gz", "t2f": "y.nii.gz"}}]}
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    assert load_manifest(str(tmp_path / "manifest.json")).cases[0].modalities == ["flair", "t1"]


@pytest.mark.parametrize("cases,needle", [
    ([], "lists no cases"),
    ([{"case_id": "../evil", "images": {"t1": "a"}}], "invalid case id"),
    ([{"case_id": "a/b", "images": {"t1": "a"}}], "invalid case id"),
    ([{"case_id": "a", "images": {"t1": "x"}}, {"case_id": "a", "images": {"t1": "y"}}], "appears twice"),
    ([{"case_id": "a", "images": {"t1": "x", "T1n": "y"}}], "twice"),
    ([{"case_id": "a", "images": {"spectro": "x"}}], "unknown modality 'spectro'"),
    ([{"case_id": "a", "images": {}}], "lists no images"),
])
def test_bad_manifests(tmp_path, cases, needle):
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": cases}))
    with pytest.raises(ValueError) as e:
        load_manifest(str(tmp_path))
    assert needle in str(e.value)
    assert str(tmp_path) in str(e.value)


def test_missing_and_invalid_json(tmp_path):
    with pytest.raises(ManifestError, match="no corpus manifest"):
        load_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(str(tmp_path))
