"""Our trainers run through plain nnU-Net commands (extTrainer lookup), on tiny plans."""
import os


from conftest import SEG_ID, assert_validated_split, run_cli
from nnunet_mmpretrain.cli.ext_trainer_path import ext_trainer_folder, ext_trainer_value


def test_ext_trainer_command_prints_export_line():
    r = run_cli(["nnUNetv2_mmpretrain_ext_trainer"], env={"nnUNet_extTrainer": "/some/other"})
    line = r.stdout.strip()
    assert line.startswith("export nnUNet_extTrainer=")
    assert line.endswith("/some/other" + os.pathsep + ext_trainer_folder()) or \
        line.endswith("/some/other" + os.pathsep + ext_trainer_folder() + "'")
    assert ext_trainer_value(ext_trainer_folder()) == ext_trainer_folder()   # not added twice
    assert os.path.isfile(os.path.join(ext_trainer_folder(), "mmpretrain_trainers.py"))


def test_trainer_lookup_finds_ours(nnunet_dirs):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_mmpretrain.training.pretrain_variants import nnUNetTrainerMMPretrain_cpu
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerMMPretrain_cpu")
    assert cls.__name__ == "nnUNetTrainerMMPretrain_cpu" and cls.schedule == nnUNetTrainerMMPretrain_cpu.schedule


def test_tiny_plan_network_builds(planned_seg):
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    pm = PlansManager(planned_seg["plans_file"])
    cm = pm.get_configuration("3d_tiny")
    assert cm.patch_size == [32, 32, 32] and cm.batch_size == 2
    assert cm.data_identifier == pm.get_configuration("3d_fullres").data_identifier
    net = get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                 cm.network_arch_init_kwargs_req_import, 4, 4, deep_supervision=False)
    assert net(torch.zeros(1, 4, 32, 32, 32)).shape == (1, 4, 32, 32, 32)
    assert sum(p.numel() for p in net.parameters()) < 500_000


def test_train_and_predict_with_plain_nnunet_commands(planned_seg, tmp_path):
    run_cli(["nnUNetv2_train", str(SEG_ID), "3d_tiny", "0", "-tr", "nnUNetTrainerMMSmoke", "-device", "cpu"])
    out = os.path.join(planned_seg["nnUNet_results"], "Dataset990_PhantomBraTS",
                       "nnUNetTrainerMMSmoke__nnUNetPlans__3d_tiny", "fold_0")
    assert os.path.isfile(os.path.join(out, "checkpoint_final.pth"))
    assert_validated_split(out, planned_seg["folder"])
    pred = tmp_path / "pred"
    images = os.path.join(planned_seg["nnUNet_raw"], "Dataset990_PhantomBraTS", "imagesTs")
    run_cli(["nnUNetv2_predict", "-i", images, "-o", str(pred), "-d", str(SEG_ID), "-c", "3d_tiny", "-f", "0",
             "-tr", "nnUNetTrainerMMSmoke", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
    import SimpleITK as sitk
    import numpy as np
    seg = sitk.ReadImage(str(pred / "phantom_0006.nii.gz"))
    ref = sitk.ReadImage(os.path.join(images, "phantom_0006_0000.nii.gz"))
    assert seg.GetSize() == ref.GetSize() and np.allclose(seg.GetSpacing(), ref.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2, 3}
