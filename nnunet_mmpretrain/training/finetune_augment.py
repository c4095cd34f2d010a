"""Fine-tuning augmentations as trainer mixins (put them before ``PretrainedEncoder``):

* :class:`AlignedTemplateSubstitution`: BrainMVP's template substitution with templates placed on
  each case voxel for voxel (:mod:`nnunet_mmpretrain.transfer.aligned`), k ~ U{0..min(3, C-1)}
  channels per sample; with ``consistency_weight > 0`` two differently substituted copies of each
  sample go through the network and the MSE between their bottleneck features is added (BrainMVP's
  fine-tuning consistency term, weight 0.1).
* :class:`RandomTemplateSubstitution`: the same with template crops at random positions, for
  bundles whose templates have no place in the world.
* :class:`DADAugmentation`: domain adaptive denormalization of the input channels with another
  modality's foreground statistics (from nnU-Net's dataset fingerprint).

Every mixin extends the transforms of the class after it (``super()``), so mixins combine with
each other and with nnU-Net's own augmentation variants.
"""
from __future__ import annotations

import numpy as np
import torch
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from torch import autocast

from nnunetv2.utilities.helpers import dummy_context

from nnunet_mmpretrain.modalities import channels_to_modalities
from nnunet_mmpretrain.pretrain.dad import DADTransform
from nnunet_mmpretrain.training.errors import FinetuneError
from nnunet_mmpretrain.training.schedules import backward_and_step
from nnunet_mmpretrain.transfer.aligned import (CaseTemplates, TemplateChannelsDataset, draw_substitutions,
                                                substitute)
from nnunet_mmpretrain.transfer.bundle import load_bundle
from nnunet_mmpretrain.transfer.inject import unwrap
from nnunet_mmpretrain.transfer.substitution import TemplateBank, TemplateSubstitutionTransform


def _after_spatial(composed) -> int:
    """Index right after nnU-Net's spatial transform in a composed pipeline (0 when there is none)."""
    return next((i + 1 for i, x in enumerate(composed.transforms) if isinstance(x, SpatialTransform)), 0)


def bottleneck_consistency(network, x: torch.Tensor, B: int):
    """One forward pass of ``x`` (2B, C, X, Y, Z: two substituted copies of B samples) through
    ``network`` *as given* (the DDP wrapper when there is one, so that backward synchronises the
    ranks' gradients); the bottleneck (the encoder's deepest output) is taken by a forward hook on
    the unwrapped network's encoder. Returns (network output, MSE between the two copies' bottleneck
    features)."""
    seen = {}

    def keep(_module, _inputs, out):
        seen["bottleneck"] = out[-1] if isinstance(out, (list, tuple)) else out

    hook = unwrap(network).encoder.register_forward_hook(keep)
    try:
        output = network(x)
    finally:
        hook.remove()
    b = seen["bottleneck"]
    return output, torch.nn.functional.mse_loss(b[:B].float(), b[B:].float())


class AlignedTemplateSubstitution:
    """Mixin: template substitution aligned with the case (see the module docstring)."""

    template_max_channels: int = 3
    consistency_weight: float = 0.0
    grad_clip: float = 12.0          # gradient-norm clip of the consistency step (nnU-Net's value)

    def get_tr_and_val_datasets(self):
        tr, val = super().get_tr_and_val_datasets()
        path = self.bundle_path()
        bundle = load_bundle(path)
        templates = CaseTemplates.from_bundle(bundle, self.plans_manager.transpose_forward)
        if templates.geometry is None or not templates.modalities:
            raise FinetuneError(f"the bundle {path} has no templates placed in the world (its corpus is not on one "
                                f"grid): aligned template substitution is impossible; use "
                                f"nnUNetTrainerMMFinetune_templateAugRandom (random-position crops) instead.")
        mods = channels_to_modalities(self.dataset_json["channel_names"])
        self._substitution_eligible = [c for c, m in enumerate(mods) if templates.has(m)]
        self.print_to_log_file(f"aligned template substitution: channels {self._substitution_eligible} "
                               f"({', '.join(str(mods[c]) for c in self._substitution_eligible)}), up to "
                               f"{self.template_max_channels} per sample; consistency weight {self.consistency_weight}")
        return TemplateChannelsDataset(tr, templates, mods), val

    def _draw(self, batch_size: int):
        return draw_substitutions(batch_size, self._substitution_eligible, self.num_input_channels,
                                  self.template_max_channels, np.random.default_rng())

    def train_step(self, batch: dict) -> dict:
        data = batch["data"]
        if data.shape[1] != 2 * self.num_input_channels:
            raise FinetuneError(f"{type(self).__name__}: a training batch has {data.shape[1]} channels, expected "
                                f"{2 * self.num_input_channels} (the {self.num_input_channels} images + their aligned "
                                f"templates from TemplateChannelsDataset): put the substitution mixin before any "
                                f"mixin that replaces get_tr_and_val_datasets.")
        if self.consistency_weight <= 0:
            return super().train_step({**batch, "data": substitute(data, self._draw(data.shape[0]))})
        return self._consistency_step(data, batch["target"])

    def _consistency_step(self, data, target) -> dict:
        B = data.shape[0]
        x = torch.cat([substitute(data, self._draw(B)), substitute(data, self._draw(B))]).to(self.device)
        dup = lambda t: torch.cat([t, t]).to(self.device, non_blocking=True)
        target = [dup(t) for t in target] if isinstance(target, list) else dup(target)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output, l_cons = bottleneck_consistency(self.network, x, B)
            loss = self.loss(output, target) + self.consistency_weight * l_cons
        backward_and_step(loss, self.optimizer, self.grad_scaler, self.network.parameters(), self.grad_clip)
        return {"loss": loss.detach().cpu().numpy()}


class RandomTemplateSubstitution:
    """Mixin for bundles whose templates have no place in the world (corpus not on one grid):
    after nnU-Net's spatial transform, with probability ``template_p`` a sample gets
    1..min(3, C-1) channels replaced by a crop of their modality's template at a random position.
    The anatomy of the substituted channel does not match the others; use
    :class:`AlignedTemplateSubstitution` whenever the bundle has template geometry."""

    template_p: float = 0.75

    def get_training_transforms(self, *args, **kwargs):
        composed = super().get_training_transforms(*args, **kwargs)
        bank = TemplateBank.from_bundle(load_bundle(self.bundle_path()), target_spacing=self.configuration_manager.spacing,
                                        position_free=True)
        t = TemplateSubstitutionTransform(bank, channels_to_modalities(self.dataset_json["channel_names"]),
                                          p_per_sample=self.template_p)
        at = _after_spatial(composed)
        composed.transforms.insert(at, t)
        self.print_to_log_file(f"template substitution (random positions) after transform #{at} (p={self.template_p}; "
                               f"templates: {', '.join(bank.modalities)})")
        return composed


def modality_stats_bank(intensity_per_channel: dict) -> np.ndarray:
    """(K, 2) DAD bank in nnU-Net's z-score space: for every ordered pair of channels (c, o), the
    statistics of o expressed in c's normalisation, ((mu_o - mu_c) / sd_c, sd_o / sd_c), from the
    raw foreground statistics of nnU-Net's fingerprint ({"0": {"mean":, "std":}, ...}).
    A single channel gives [(0, 1)] (no other domain to borrow from)."""
    st = [(float(v["mean"]), float(v["std"])) for _, v in sorted(intensity_per_channel.items(), key=lambda kv: int(kv[0]))]
    bank = [((mo - mc) / sc, so / sc) for i, (mc, sc) in enumerate(st) for j, (mo, so) in enumerate(st) if i != j]
    return np.array(bank or [(0.0, 1.0)], np.float32)


class DADAugmentation:
    """Mixin: after nnU-Net's spatial transform, with probability ``dad_p`` per sample each
    channel is re-expressed with another modality's foreground statistics (bank from the dataset
    fingerprint, :func:`modality_stats_bank`), jittered by ``dad_jitter``."""

    dad_p: float = 0.3
    dad_jitter: float = 0.1

    def get_training_transforms(self, *args, **kwargs):
        composed = super().get_training_transforms(*args, **kwargs)
        bank = modality_stats_bank(self.plans_manager.foreground_intensity_properties_per_channel)
        at = _after_spatial(composed)
        composed.transforms.insert(at, DADTransform(bank, p=self.dad_p, jitter=self.dad_jitter))
        self.print_to_log_file(f"DAD augmentation after transform #{at} (p={self.dad_p}, {len(bank)} bank entries)")
        return composed
