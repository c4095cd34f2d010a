"""Checkpoint format of the pretraining trainer (weights-only, resumable, with the identity of the
plans it was trained with) as plain functions over the trainer's state."""
from __future__ import annotations

from dataclasses import asdict

import torch

from nnunet_mmpretrain.modalities import MODALITIES
from nnunet_mmpretrain.training.checkpoint import init_args, plans_identity, restore_training_state
from nnunet_mmpretrain.training.errors import PretrainingError


def identity(trainer) -> dict:
    """What must match for a checkpoint to resume under these plans."""
    return plans_identity(trainer, patch_size=[int(p) for p in trainer.configuration_manager.patch_size])


def trainer_settings(cls) -> dict:
    """Class-level settings of a pretraining trainer class (masking, optimiser, schedule) as the
    model card records them; the checkpoint carries them so that the card needs no trainer import."""
    out = {k: getattr(cls, k) for k in ("mask_ratio", "block_size", "lr", "weight_decay", "template_lr", "decoder")
           if isinstance(getattr(cls, k, None), (int, float, str))}
    sch = getattr(cls, "schedule", None)
    if sch is not None:
        out.update(planned_epochs=sch.epochs, iterations_per_epoch=sch.iterations,
                   val_iterations_per_epoch=sch.val_iterations)
    return out


def checkpoint_dict(trainer) -> dict:
    """Everything :func:`restore` needs; loadable with ``torch.load(weights_only=True)``."""
    net = trainer._net()
    return {
        "network_weights": net.state_dict(),
        "optimizer_state": trainer.optimizer.state_dict(),
        "grad_scaler_state": trainer.grad_scaler.state_dict() if trainer.grad_scaler is not None else None,
        "current_epoch": trainer.current_epoch + 1,
        "mm_log": trainer.mm_log,
        "nnunet_logging": {k: [float(x) if x is not None else None for x in v] if k != "dice_per_class_or_region"
                           else [] for k, v in trainer.logger.get_checkpoint().items()},
        "best_val": trainer._best_val,
        "identity": identity(trainer),
        "objective": asdict(trainer.objective),
        "init_args": init_args(trainer),
        "trainer_name": trainer.__class__.__name__,
        "trainer_settings": trainer_settings(type(trainer)),
        "mmpretrain": {"vocabulary": list(MODALITIES), "atlas_registered": trainer.atlas_registered,
                       "modalities_seen": sorted({m for p in trainer.corpus_props.values() for m in p["modalities"]}),
                       "template_grid": list(net.templates.grid_shape) if net.templates is not None else None,
                       "template_space": net.templates.value_space if net.templates is not None else None,
                       "template_geometry": trainer.grid_geometry.to_dict() if trainer.grid_geometry else None,
                       "decoder": trainer.decoder},
    }


def restore(trainer, filename: str) -> None:
    """Load a checkpoint written by :func:`checkpoint_dict` into the trainer (exact resume)."""
    try:
        ck = torch.load(filename, map_location=trainer.device, weights_only=True)
    except Exception as e:
        raise PretrainingError(f"cannot read checkpoint {filename} ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200]}); it is not a pretraining checkpoint of this plugin "
                               f"or is damaged: delete it to start afresh.") from e
    ident = ck.get("identity")
    if ident is None:
        raise PretrainingError(f"{filename} is not a checkpoint of nnUNetTrainerMMPretrain.")
    mine = identity(trainer)
    diff = [k for k in mine if ident.get(k) != mine[k]]
    if diff:
        raise PretrainingError(
            f"{filename} was written with other plans ({', '.join(f'{k}: {ident.get(k)!r} vs now {mine[k]!r}' for k in diff if k != 'architecture')}"
            f"{'; the architecture differs' if 'architecture' in diff else ''}). Resume with the same -p/-c, "
            f"or start a new training in another results folder.")
    restore_training_state(trainer, ck)
    trainer.mm_log = {k: list(v) for k, v in ck["mm_log"].items()}
    trainer._best_val = ck.get("best_val")
    logging = trainer.logger.get_checkpoint()
    logging.update({k: list(v) for k, v in ck.get("nnunet_logging", {}).items() if k in logging})
    trainer.logger.load_checkpoint(logging)
