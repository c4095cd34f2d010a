"""Variants of the pretraining trainer: a few class attributes each over
:class:`~nnunet_mmpretrain.training.pretrain.nnUNetTrainerMMPretrain`."""
from __future__ import annotations

from dataclasses import replace

from nnunet_mmpretrain.pretrain.objectives import ObjectiveConfig
from nnunet_mmpretrain.training.pretrain import nnUNetTrainerMMPretrain
from nnunet_mmpretrain.training.pretrain_checkpoint import trainer_settings
from nnunet_mmpretrain.training.schedules import Schedule


class nnUNetTrainerMMPretrain_subjectPositives(nnUNetTrainerMMPretrain):
    """Contrastive term with the cross-modal positives of Wen et al. 2023: every view of the same
    subject (any modality) is a positive; temperature 0.1."""
    objective = ObjectiveConfig(temperature=0.1, positives="subject")


class nnUNetTrainerMMPretrain_tau02(nnUNetTrainerMMPretrain):
    """BrainMVP with temperature 0.2 (projection head and cross-rank negatives are on in every variant)."""
    objective = ObjectiveConfig(temperature=0.2)


class nnUNetTrainerMMPretrain_dad(nnUNetTrainerMMPretrain):
    """BrainMVP + domain adaptive denormalization: each view is re-expressed, with probability
    0.5, with the foreground statistics of another sample of the batch (another case, source or
    modality); the network rebuilds the original."""
    dad_p = 0.5


class nnUNetTrainerMMPretrain_brainmvpOriginal(nnUNetTrainerMMPretrain):
    """The released BrainMVP code's template handling, for the ablation: zero-initialised
    templates squeezed into [0, 1] at each use."""
    template_init = "zeros"
    template_space = "minmax"


#: The CPU recipe's objective: equal weights, reconstruction measured on the masked voxels only,
#: the joint view on, no contrastive term (at CPU budgets it cost the encoder stages tumour
#: information in a frozen-feature probe; docs/METHOD.md).
CPU_OBJECTIVE = ObjectiveConfig(w_md=1.0, w_cmr=1.0, w_mcl=0.0, recon_region="masked", temperature=0.2, w_joint=1.0)


#: A plain masked autoencoder's objective: the masked view rebuilt from itself, loss on the masked
#: voxels, no cross-modal view, no contrastive term (the trainers also set ``template_fill = False``).
MAE_OBJECTIVE = ObjectiveConfig(w_md=1.0, w_cmr=0.0, w_mcl=0.0, recon_region="masked", template_warmup_fraction=0.0)


class nnUNetTrainerMMPretrain_cpu(nnUNetTrainerMMPretrain):
    """The CPU recipe (small patches, minutes of training; see docs/METHOD.md): 60 % of the 8^3
    blocks masked (0.875 of a 32^3 patch leaves 8 visible blocks), loss on the masked voxels, AdamW
    1e-3 with a 2-epoch warm-up, equal weights, a hypercolumn readout instead of the skip-free
    decoder, so that every encoder stage has to compute what the reconstruction needs, the joint
    view (two modalities in, both rebuilt) and no contrastive term.
    40 epochs x 30 iterations."""
    schedule = Schedule(epochs=40, iterations=30, val_iterations=4, save_every=10)
    objective = CPU_OBJECTIVE
    mask_ratio = 0.6
    lr = 1e-3
    warmup_epochs = 2
    decoder = "hypercolumn"


class nnUNetTrainerMMPretrain_cpuBrainMVP(nnUNetTrainerMMPretrain):
    """BrainMVP's defaults (mask 0.875, AdamW 3e-4, weights 10/1/1, whole-patch loss, skip-free
    decoder) on the CPU recipe's schedule: the reference point of the pretext benchmark."""
    schedule = nnUNetTrainerMMPretrain_cpu.schedule
    warmup_epochs = 2


class nnUNetTrainerMMPretrain_demo(nnUNetTrainerMMPretrain_cpu):
    """The demo: the CPU recipe, 20 epochs x 30 iterations (about 3 minutes on 2 cores)."""
    schedule = Schedule(epochs=20, iterations=30, val_iterations=4, save_every=5)


# ---- a pretraining budget worth the name on the CPU configuration (the multisite suite):
# ---- 100 epochs x 30 iterations = 3,000 steps, equal for the three recipes compared
LONG_CPU_SCHEDULE = Schedule(epochs=100, iterations=30, val_iterations=4, save_every=10)


class nnUNetTrainerMMPretrain_cpuLong(nnUNetTrainerMMPretrain_cpu):
    """The CPU recipe, 3,000 steps (100 epochs x 30 iterations)."""
    schedule = LONG_CPU_SCHEDULE


class nnUNetTrainerMMPretrain_cpuAllLong(nnUNetTrainerMMPretrain_cpuLong):
    """The CPU recipe with the joint view over *every* modality of the case (each block-masked on
    its own, stems averaged, all rebuilt) instead of the pair; weight 0.5, so that its up to four
    terms weigh about as much as the pair's two. 3,000 steps. Downstream the encoder sees all of a
    case's channels at once; the pair view shows it two at most."""
    objective = replace(CPU_OBJECTIVE, w_joint=0.5, joint_all=True)


class nnUNetTrainerMMPretrain_cpuDownstreamStemLong(nnUNetTrainerMMPretrain_cpuAllLong):
    """The joint view over every modality, mixed exactly as the transferred ``modality`` stem mixes
    a case's channels (kernels side by side before the stem's normalisation), 3,000 steps. On the
    multisite corpus the recipe's modality stems learned nearly the same kernel (per-filter cosine
    0.92-1.00), so downstream the four channels entered the encoder as one; this view penalises
    that."""
    objective = replace(CPU_OBJECTIVE, w_joint=0.5, joint_all=True, joint_stem="downstream")


class nnUNetTrainerMMPretrain_cpuBrainMVPLong(nnUNetTrainerMMPretrain_cpuBrainMVP):
    """BrainMVP's defaults on the CPU configuration, 3,000 steps."""
    schedule = LONG_CPU_SCHEDULE


class nnUNetTrainerMMPretrain_5epochs(nnUNetTrainerMMPretrain):
    """A plumbing check (the cpu-smoke preset, the tests): 5 epochs x 3 iterations; MCL from epoch 2,
    template warm-up epoch 0. Says nothing about what pretraining is worth."""
    schedule = Schedule(epochs=5, iterations=3, val_iterations=1, save_every=2)
    warmup_epochs = 1


# ---- the real-size rehearsal (scripts/rehearse_real_size.py): a few steps at the planned patch,
# ---- to measure time and memory per step; says nothing about what pretraining is worth
REHEARSAL = Schedule(epochs=1, iterations=2, val_iterations=1, save_every=1)


class nnUNetTrainerMMPretrain_rehearsal(nnUNetTrainerMMPretrain):
    """BrainMVP's defaults, 1 epoch x 2 iterations + 1 validation iteration."""
    schedule = REHEARSAL
    warmup_epochs = 0


class nnUNetTrainerMMPretrain_cpuRehearsal(nnUNetTrainerMMPretrain_cpu):
    """The CPU recipe, 1 epoch x 2 iterations + 1 validation iteration."""
    schedule = REHEARSAL
    warmup_epochs = 0


class nnUNetTrainerMMPretrain_oneStep(nnUNetTrainerMMPretrain):
    """BrainMVP's defaults, one training step and one validation step (the DDP rehearsal)."""
    schedule = Schedule(epochs=1, iterations=1, val_iterations=1, save_every=1)
    warmup_epochs = 0


class nnUNetTrainerMMPretrain_oneStepMAE(nnUNetTrainerMMPretrain_oneStep):
    """A plain masked autoencoder (one view, no partner, no template fill, no contrastive term),
    one training step and one validation step: the DDP rehearsal where two BrainMVP ranks do not
    fit in memory."""
    objective = MAE_OBJECTIVE
    template_fill = False


# ---- the ablation ladder of the phantom suite: the demo's schedule, mask, optimiser and readout,
# ---- only the proxy tasks change (equal budgets: 20 epochs x 30 iterations of the same batches)
class nnUNetTrainerMMPretrain_demoMAE(nnUNetTrainerMMPretrain_demo):
    """Plain single-view masked autoencoder: masked blocks zeroed, the modality rebuilt from
    itself (no partner, no templates, no contrastive term); the baseline OpenMind found strongest."""
    objective = MAE_OBJECTIVE
    template_fill = False


class nnUNetTrainerMMPretrain_cpuMAELong(nnUNetTrainerMMPretrain_demoMAE):
    """Plain masked autoencoder with the CPU recipe's mask, optimiser and readout, 3,000 steps."""
    schedule = LONG_CPU_SCHEDULE


class nnUNetTrainerMMPretrain_demoCMR(nnUNetTrainerMMPretrain_demo):
    """Ablation step 1: cross-modal reconstruction alone (masked blocks filled from another
    modality of the case; no templates)."""
    objective = ObjectiveConfig(w_md=0.0, w_cmr=1.0, w_mcl=0.0, recon_region="masked", template_warmup_fraction=0.0)
    template_fill = False


class nnUNetTrainerMMPretrain_demoCMRMD(nnUNetTrainerMMPretrain_demo):
    """Ablation step 2: + modality template distillation (template-filled view, template
    warm-up of the cross-modal view)."""
    objective = ObjectiveConfig(w_md=1.0, w_cmr=1.0, w_mcl=0.0, recon_region="masked")


class nnUNetTrainerMMPretrain_demoCMRMDMCL(nnUNetTrainerMMPretrain_demo):
    """Ablation step 3: + modality-aware contrastive learning (temperature 0.2, from 2/3 of training)."""
    objective = ObjectiveConfig(w_md=1.0, w_cmr=1.0, w_mcl=1.0, recon_region="masked", temperature=0.2)


class nnUNetTrainerMMPretrain_demoCMRMDMCLDAD(nnUNetTrainerMMPretrain_demoCMRMDMCL):
    """Ablation step 4: + domain adaptive denormalization of the views (p 0.5)."""
    dad_p = 0.5


# ---- the same ladder at BrainMVP's scale (its schedule, mask, optimiser, weights 10/1/1 and decoder);
# ---- + MCL is nnUNetTrainerMMPretrain itself and + DAD is nnUNetTrainerMMPretrain_dad
class nnUNetTrainerMMPretrain_MAE(nnUNetTrainerMMPretrain):
    """Plain single-view masked autoencoder on BrainMVP's budget and network (zero fill, no partner,
    no templates, no contrastive term)."""
    objective = ObjectiveConfig(w_md=1.0, w_cmr=0.0, w_mcl=0.0, template_warmup_fraction=0.0)
    template_fill = False


class nnUNetTrainerMMPretrain_CMR(nnUNetTrainerMMPretrain):
    """Ablation: cross-modal reconstruction alone on BrainMVP's budget (no templates)."""
    objective = ObjectiveConfig(w_md=0.0, w_cmr=1.0, w_mcl=0.0, template_warmup_fraction=0.0)
    template_fill = False


class nnUNetTrainerMMPretrain_CMRMD(nnUNetTrainerMMPretrain):
    """Ablation: cross-modal reconstruction + template distillation (BrainMVP without its
    contrastive term)."""
    objective = ObjectiveConfig(w_mcl=0.0)


def settings_of_trainer(name) -> dict:
    """:func:`~nnunet_mmpretrain.training.pretrain_checkpoint.trainer_settings` of the pretraining
    trainer called ``name`` (this module's variants or the base trainer), or {} when unknown; for
    checkpoints written before they recorded their settings."""
    cls = globals().get(str(name)) if str(name).startswith("nnUNetTrainerMMPretrain") else None
    return trainer_settings(cls) if isinstance(cls, type) else {}
