"""Encoder freezing, the one home for it: fine-tuning (``nnUNetTrainerMMFinetune_frozen``) and the
benchmark's frozen cells use the same function under the same flag, ``freeze_encoder``."""
from __future__ import annotations

from nnunet_mmpretrain.training.errors import FinetuneError
from nnunet_mmpretrain.transfer.inject import unwrap


def freeze_encoder_stages(network) -> int:
    """Set ``requires_grad=False`` on every parameter under the network's ``key_to_encoder`` outside
    its ``key_to_stem`` (dynamic-network-architectures names both; the stem may lie inside or outside
    the encoder). Returns the number of parameter tensors frozen; raises :class:`FinetuneError` when
    nothing matched (a freezing that freezes nothing would pass silently). Works on wrapped networks."""
    net = unwrap(network)
    enc, stem = getattr(net, "key_to_encoder", None), getattr(net, "key_to_stem", None)
    if not enc or not stem:
        raise FinetuneError(f"{type(net).__name__} names no key_to_encoder / key_to_stem: cannot tell its encoder "
                            f"stages from its stem, so nothing can be frozen; use a dynamic-network-architectures "
                            f"network (the plans' PlainConvUNet / ResidualEncoderUNet).")
    n = 0
    for k, p in net.named_parameters():
        if k.startswith(enc + ".") and not k.startswith(stem + "."):
            p.requires_grad_(False)
            n += 1
    if n == 0:
        raise FinetuneError(f"freezing the encoder matched no parameter of {type(net).__name__} (key_to_encoder "
                            f"{enc!r}, key_to_stem {stem!r}): the flag freeze_encoder would change nothing.")
    return n


class FrozenEncoderStages:
    """Mixin (before ``PretrainedEncoder`` and the nnU-Net trainer): with ``freeze_encoder`` the encoder
    stages are fixed after nnU-Net built the network and the bundle (if any) was injected, on every
    start (also ``--c``: a checkpoint does not keep ``requires_grad``). The stem, decoder and heads train."""

    freeze_encoder: bool = False

    def on_train_start(self):
        super().on_train_start()
        if self.freeze_encoder:
            n = freeze_encoder_stages(self.network)
            stem = unwrap(self.network).key_to_stem
            self.print_to_log_file(f"encoder frozen: {n} parameter tensors fixed ({stem}, decoder and heads train)")
