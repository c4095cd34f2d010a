"""What every checkpoint of this plugin's trainers shares, one home for it: the identity of the
plans a checkpoint was trained with (what must match to resume), the arguments nnU-Net needs to
rebuild the trainer, and restoring the training state. Each trainer adds its own entries."""
from __future__ import annotations

import json


def plans_identity(trainer, **extra) -> dict:
    """Plans name, dataset, configuration and architecture of ``trainer`` (+ ``extra`` entries):
    a checkpoint resumes only where all of them are equal."""
    cm = trainer.configuration_manager
    return {"plans_name": trainer.plans_manager.plans_name, "dataset_name": trainer.plans_manager.dataset_name,
            "configuration": trainer.configuration_name,
            "architecture": json.dumps(cm.network_arch_init_kwargs, sort_keys=True, default=str), **extra}


def init_args(trainer) -> dict:
    """nnU-Net's ``init_args`` of a checkpoint (JSON strings: loadable with ``weights_only=True``),
    plus the ``mmpretrain_*`` settings a subclass records with the run (the benchmark cells'), as
    they are."""
    return {"plans": json.dumps(trainer.plans_manager.plans), "configuration": trainer.configuration_name,
            "fold": str(trainer.fold), "dataset_json": json.dumps(trainer.dataset_json), "device": str(trainer.device),
            **{k: v for k, v in getattr(trainer, "my_init_kwargs", {}).items() if k.startswith("mmpretrain_")}}


def restore_training_state(trainer, ck: dict) -> None:
    """Put a checkpoint dict's network, optimizer, grad scaler and epoch into ``trainer`` (the part
    every trainer of this plugin restores the same way; each adds its own logs and checks)."""
    trainer._net().load_state_dict(ck["network_weights"])
    trainer.optimizer.load_state_dict(ck["optimizer_state"])
    if trainer.grad_scaler is not None and ck.get("grad_scaler_state") is not None:
        trainer.grad_scaler.load_state_dict(ck["grad_scaler_state"])
    trainer.current_epoch = int(ck["current_epoch"])
    if hasattr(trainer, "my_init_kwargs"):   # the run's recorded settings travel on with it
        trainer.my_init_kwargs.update({k: v for k, v in (ck.get("init_args") or {}).items()
                                       if k.startswith("mmpretrain_")})
