"""The pretraining patch loader on the preprocessed phantom corpus."""
import os

import numpy as np

from nnunet_mmpretrain.modalities import MODALITIES


def _loader(planned_corpus, patch, props_edit=None, batch=4, seed=0, all_modalities=False):
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunet_mmpretrain.training.pretrain_data import CorpusPatchLoader
    folder = planned_corpus["data"]
    ids = sorted(nnUNetDatasetBlosc2.get_identifiers(folder))
    props = {k: load_pickle(os.path.join(folder, k + ".pkl")) for k in ids}
    if props_edit:
        props_edit(props)
    ds = nnUNetDatasetBlosc2(folder, ids)
    conf = planned_corpus["plans"]["configurations"]["3d_fullres"]
    return CorpusPatchLoader(ds, ids, props, batch, patch, planned_corpus["plans"]["transpose_forward"],
                             conf["spacing"], seed=seed, all_modalities=all_modalities), props


def test_pairs_come_from_the_case_and_patches_from_its_channels(planned_corpus):
    dl, props = _loader(planned_corpus, (32, 32, 32))
    for _ in range(5):
        b = dl.generate_train_batch()
        assert b["target"].shape == (4, 1, 32, 32, 32) and b["starts"].shape == (4, 3)
        for k, m, n in zip(b["keys"], b["m_idx"], b["n_idx"]):
            mods = props[k]["modalities"]
            assert MODALITIES[m] in mods and MODALITIES[n] in mods and m != n


def test_stack_holds_every_modality_of_the_case_at_the_same_patch(planned_corpus):
    dl, props = _loader(planned_corpus, (32, 32, 32), batch=6, seed=2, all_modalities=True)
    K = max(len(p["modalities"]) for p in props.values())
    b = dl.generate_train_batch()
    assert b["stack"].shape == (6, K, 32, 32, 32) and b["stack_idx"].shape == (6, K)
    for i, k in enumerate(b["keys"]):
        mods = props[k]["modalities"]
        assert [MODALITIES[j] for j in b["stack_idx"][i] if j >= 0] == list(mods)
        assert (b["stack_idx"][i, len(mods):] == -1).all() and not b["stack"][i, len(mods):].any()
        # the target is the stack's channel of modality m, at the same voxels
        assert np.array_equal(b["stack"][i, list(mods).index(MODALITIES[b["m_idx"][i]])], b["target"][i, 0])
    assert "stack" not in _loader(planned_corpus, (32, 32, 32))[0].generate_train_batch()


def test_single_modality_case_gets_no_partner(planned_corpus):
    def only_t1(props):
        for k in props:
            if k.startswith("ixi"):
                props[k]["modalities"] = ["t1"]
    dl, props = _loader(planned_corpus, (32, 32, 32), only_t1, batch=8, seed=3)
    seen = 0
    for _ in range(4):
        b = dl.generate_train_batch()
        for i, k in enumerate(b["keys"]):
            if k.startswith("ixi"):
                seen += 1
                assert b["n_idx"][i] == -1 and b["m_idx"][i] == MODALITIES.index("t1")
                assert not b["partner"][i].any() and b["target"][i].any()
    assert seen > 0


def test_patch_larger_than_case_is_centred_and_padded(planned_corpus):
    import blosc2
    dl, props = _loader(planned_corpus, (96, 96, 96), batch=2)
    b = dl.generate_train_batch()
    for i, k in enumerate(b["keys"]):
        shape = np.array(blosc2.open(os.path.join(planned_corpus["data"], k + ".b2nd")).shape[1:])
        nz = np.argwhere(b["target"][i, 0] != 0)
        assert (nz.max(0) - nz.min(0) + 1 <= shape).all()
        pad = (96 - shape) // 2
        assert (nz.min(0) >= pad).all()
        from nnunet_mmpretrain.training.pretrain_data import grid_geometry
        off = grid_geometry(props[k], planned_corpus["plans"]["transpose_forward"],
                            planned_corpus["plans"]["configurations"]["3d_fullres"]["spacing"])[0]
        assert (b["starts"][i] == off - pad).all()


def _signature(batch):
    return tuple(batch["keys"]), batch["starts"].tobytes(), batch["m_idx"].tobytes()


def test_worker_processes_draw_different_batches(planned_corpus):
    """nnU-Net's augmenter gives every worker a copy of the loader; each must draw its own batches
    (issue 24: with one shared stream, 12 workers repeated every batch 12 times)."""
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    dl, _ = _loader(planned_corpus, (32, 32, 32), batch=2, seed=5)
    aug = NonDetMultiThreadedAugmenter(dl, None, 2, num_cached=2, seeds=None, wait_time=0.002)
    try:
        sigs = [_signature(next(aug)) for _ in range(8)]
    finally:
        aug._finish()
    assert len(set(sigs)) == len(sigs), "two worker processes returned the same batch"


def test_worker_streams_are_reproducible_and_distinct(planned_corpus):
    import copy
    dl, _ = _loader(planned_corpus, (32, 32, 32), batch=2, seed=5)
    copies = [copy.deepcopy(dl) for _ in range(3)]
    for c, tid in zip(copies, (0, 1, 0)):
        c.set_thread_id(tid)
    a, b, a2 = ([_signature(c.generate_train_batch()) for _ in range(3)] for c in copies)
    assert a == a2 and a != b
