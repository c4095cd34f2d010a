import pytest

from nnunet_mmpretrain import modalities as mod


@pytest.mark.parametrize("alias,canon", [("t1n", "t1"), ("T2F", "flair"), ("t2w", "t2"), ("T1ce", "t1c"),
                                         ("t1gd", "t1c"), ("T1-Gd", "t1c"), ("FLAIR", "flair"), ("PD", "pd"),
                                         ("adc", "adc"), ("DWI", "dwi"), ("mra", "mra")])
def test_aliases(alias, canon):
    assert mod.canonical(alias) == canon


def test_vocabulary_order_is_the_checkpoint_contract():
    assert mod.MODALITIES == ("flair", "t1", "t1c", "t2", "mra", "pd", "dwi", "adc")
    assert mod.index("t1ce") == 2


def test_unknown_modality_lists_known_names():
    with pytest.raises(mod.UnknownModalityError) as e:
        mod.canonical("spectroscopy", where="case7")
    msg = str(e.value)
    assert "spectroscopy" in msg and "case7" in msg
    for m in mod.MODALITIES:
        assert m in msg


def test_channel_names_mapping():
    assert mod.channels_to_modalities({"1": "T1ce", "0": "T1", "2": "T1-IR"}) == ["t1", "t1c", None]
    with pytest.raises(mod.UnknownModalityError):
        mod.channels_to_modalities({"0": "T1-IR"}, strict=True)
    assert mod.display_name("t1gd") == "T1ce"
