"""Learnable modality templates for modality template distillation (MD); docs/METHOD.md.

One learnable volume per modality on a canonical grid (the atlas grid for registered corpora,
e.g. SRI24 240 x 240 x 155). At each use a template is cropped at the patch's position; the crop
fills the masked blocks of the template view, so the reconstruction loss reaches the template
through the fill and it learns a mean appearance of its modality.

Value space: by default (``value_space='data'``) a template holds values in the space of the
network's inputs (nnU-Net's z-scores: brain about -2..5, background 0) and is used as it is, so
it can represent dark and bright tissue; start it from the corpus mean of its modality
(``init=``) and the fill is meaningful from the first step. ``value_space='minmax'`` reproduces
the released BrainMVP code, which squeezes each template into [0, 1] at every use (its inputs
are [0, 1]); in z-score space that template cannot represent the data, so it is kept only as an
ablation.

Shapes: B = batch, M = number of templates, (GX, GY, GZ) = template grid,
(X, Y, Z) = patch. Axes follow the arrays the trainer feeds (nnU-Net's preprocessed axis order);
:meth:`ModalityTemplates.export_nifti` takes a ``transpose`` for writing them in another order.
"""
from __future__ import annotations

import math
import os
from typing import List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_mmpretrain.io_utils import atomic_path
from nnunet_mmpretrain.modalities import MODALITIES, canonical

#: format tag stored in :meth:`ModalityTemplates.state`
STATE_FORMAT = "nnunet_mmpretrain.templates/1"

InitLike = Union[str, Mapping[str, "np.ndarray | torch.Tensor"], np.ndarray, torch.Tensor]


def minmax(a, eps: float = 1e-6):
    """``(a - min) / (max - min + eps)`` of a tensor (differentiable) or a numpy array: the
    released BrainMVP code's [0, 1] squeeze of a template."""
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo + eps)


class ModalityTemplates(nn.Module):
    """Per-modality learnable template volumes.

    Args:
        grid_shape: template grid (GX, GY, GZ) (2D grids work too).
        modalities: modality names (aliases accepted), default all of :data:`MODALITIES`. The
            forward pass is indexed by *vocabulary slots*, so a subset is allowed.
        init: ``'zeros'`` (BrainMVP), a mapping modality -> array (GX, GY, GZ) (e.g. a corpus
            mean; modalities missing from the mapping start at zero), or an array
            (M, GX, GY, GZ) in ``modalities`` order.
        value_space: ``'data'`` (default: used as they are) or ``'minmax'`` (BrainMVP's [0, 1]
            squeeze at each use; see the module docstring).
        eps: (``'minmax'`` only) added to (max - min) in the min-max normalisation; an all-constant template (the
            zero init) normalises to zeros, never NaN. Note that the normalisation makes the
            gradient reaching the raw template scale with 1 / (max - min + eps): large while the
            template is nearly flat. Adam-type optimisers are insensitive to that scale, but a
            global gradient-norm clip shared with the network is not: clip the network's
            parameters and the templates separately (or exclude the templates).
        position_free: what :meth:`forward` does when ``starts`` is None (corpora that are not
            registered to the grid): ``'random'`` (default) draws a uniform random crop inside
            the grid per sample, so every part of the grid is trained and the exported template
            is a position-averaged appearance usable for template substitution; ``'center'``
            always takes the centre crop (M3AE-style single learned fill; with a grid equal to the
            patch size this is the whole template). A patch larger than the grid is centred and
            zero-padded in both modes.
    """

    def __init__(self, grid_shape: Sequence[int], modalities: Sequence[str] = MODALITIES,
                 init: InitLike = "zeros", eps: float = 1e-6, position_free: str = "random",
                 value_space: str = "data"):
        super().__init__()
        self.modalities: Tuple[str, ...] = tuple(canonical(m) for m in modalities)
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"duplicate modalities in {list(modalities)}")
        self.grid_shape: Tuple[int, ...] = tuple(int(s) for s in grid_shape)
        if position_free not in ("random", "center"):
            raise ValueError(f"position_free must be 'random' or 'center', got {position_free!r}")
        self.position_free = position_free
        if value_space not in ("data", "minmax"):
            raise ValueError(f"value_space must be 'data' or 'minmax', got {value_space!r}")
        self.value_space = value_space
        self.eps = float(eps)
        data = torch.zeros(len(self.modalities), *self.grid_shape, dtype=torch.float32)
        if isinstance(init, str):
            if init != "zeros":
                raise ValueError(f"init must be 'zeros', a mapping or an array, got {init!r}")
        elif isinstance(init, Mapping):
            for name, arr in init.items():
                row = self.modalities.index(canonical(name))
                data[row] = self._check_volume(arr, f"init['{name}']")
        else:
            arr = torch.as_tensor(np.asarray(init) if not torch.is_tensor(init) else init)
            if tuple(arr.shape) != tuple(data.shape):
                raise ValueError(f"init array has shape {tuple(arr.shape)}, expected "
                                 f"{tuple(data.shape)} (M, *grid_shape)")
            data.copy_(arr)
        self.templates = nn.Parameter(data)
        slot_to_row = torch.full((len(MODALITIES),), -1, dtype=torch.long)
        for row, m in enumerate(self.modalities):
            slot_to_row[MODALITIES.index(m)] = row
        self.register_buffer("slot_to_row", slot_to_row, persistent=False)

    def _check_volume(self, arr, what: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(arr) if not torch.is_tensor(arr) else arr).float()
        if tuple(t.shape) != self.grid_shape:
            raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {self.grid_shape}")
        return t

    def extra_repr(self) -> str:
        return (f"modalities={list(self.modalities)}, grid_shape={self.grid_shape}, "
                f"eps={self.eps}, position_free={self.position_free!r}, value_space={self.value_space!r}")

    # ------------------------------------------------------------------ normalisation / crops
    def _rows(self, modality_idx: torch.Tensor) -> List[int]:
        idx = torch.as_tensor(modality_idx, dtype=torch.long).reshape(-1).cpu()
        if ((idx < 0) | (idx >= len(MODALITIES))).any():
            raise ValueError(f"modality slots must be in [0, {len(MODALITIES)}), "
                             f"got {idx.tolist()}")
        rows = self.slot_to_row.cpu()[idx]
        if (rows < 0).any():
            missing = sorted({MODALITIES[int(s)] for s, r in zip(idx, rows) if r < 0})
            raise ValueError(f"no template for modality {missing}; templates exist for "
                             f"{list(self.modalities)}")
        return rows.tolist()

    def volume(self, modality: Union[str, int]) -> torch.Tensor:
        """Whole template of one modality (name or vocabulary slot) as the network sees it: the
        raw values (``value_space='data'``) or the min-max normalised ones (``'minmax'``: in
        [0, 1], zeros for a constant template).

        Returns:
            (GX, GY, GZ) tensor, differentiable.
        """
        slot = MODALITIES.index(canonical(modality)) if isinstance(modality, str) else int(modality)
        row = self._rows(torch.tensor([slot]))[0]
        if self.value_space == "data":
            return self.templates[row]
        return minmax(self.templates[row], self.eps)

    def _position_free_starts(self, batch: int, patch: Sequence[int],
                              generator: Optional[torch.Generator]) -> List[List[int]]:
        starts = []
        for _ in range(batch):
            s = []
            for g, p in zip(self.grid_shape, patch):
                if p > g:
                    s.append(-((p - g) // 2))
                elif self.position_free == "center":
                    s.append((g - p) // 2)
                else:
                    s.append(int(torch.randint(g - p + 1, (1,), generator=generator).item()))
            starts.append(s)
        return starts

    def forward(self, modality_idx: torch.Tensor, starts: Optional[torch.Tensor],
                patch_shape: Sequence[int],
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Normalised template crops, one per sample.

        Args:
            modality_idx: LongTensor (B,) of vocabulary slots (index in :data:`MODALITIES`).
            starts: LongTensor (B, 3) (one entry per grid axis): voxel index in the template grid
                of the patch's first voxel. Any value is accepted: parts of the crop outside the
                grid are zero (the background of z-scored data; the minimum in ``'minmax'``). None selects the
                position-free mode described in the class docstring.
            patch_shape: (X, Y, Z).
            generator: CPU generator for the random position-free crop.

        Returns:
            (B, 1, X, Y, Z) tensor on the templates' device (values in [0, 1] for ``'minmax'``);
            differentiable with respect to :attr:`templates` (through the crop and, for
            ``'minmax'``, the min-max statistics).
        """
        patch = tuple(int(p) for p in patch_shape)
        if len(patch) != len(self.grid_shape):
            raise ValueError(f"patch_shape {patch} and grid {self.grid_shape} differ in dimension")
        rows = self._rows(modality_idx)
        if starts is None:
            start_list = self._position_free_starts(len(rows), patch, generator)
        else:
            start_list = torch.as_tensor(starts).reshape(len(rows), len(patch)).long().tolist()
        # A single gather from the flattened parameter serves the min-max statistics and every
        # crop, so autograd builds one (M * V) gradient buffer per forward (slicing the parameter
        # per sample would materialise one per slice op: seconds per step on a CPU for the
        # 71M-voxel atlas grid). The min / max pass their gradient to one arg-min / arg-max voxel
        # per template (a valid subgradient; ties are everywhere at the zero init).
        dev = self.templates.device
        n_vox = math.prod(self.grid_shape)
        uniq = sorted(set(rows))
        index_parts, boxes = [], []
        if self.value_space == "minmax":
            with torch.no_grad():
                vols = [self.templates[r].reshape(-1) for r in uniq]
                base = torch.tensor(uniq, device=dev) * n_vox
                index_parts += [torch.stack([v.argmin() for v in vols]) + base,
                                torch.stack([v.argmax() for v in vols]) + base]
        grid_strides = [math.prod(self.grid_shape[k + 1:]) for k in range(len(patch))]
        for row, start in zip(rows, start_list):
            lin = torch.tensor(row * n_vox, device=dev)
            box, pads = [], []
            for k, (s, p, g) in enumerate(zip(start, patch, self.grid_shape)):
                a, b = max(s, 0), min(s + p, g)
                if b <= a:  # the patch misses the grid on this axis
                    a = b = 0
                shape = [1] * len(patch)
                shape[k] = b - a
                lin = lin + (torch.arange(a, b, device=dev) * grid_strides[k]).view(shape)
                box.append(b - a)
                before = min(max(a - s, 0), p)
                pads.append((before, p - before - (b - a)))
            index_parts.append(lin.reshape(-1))
            boxes.append((uniq.index(row), box, pads))
        values = self.templates.reshape(-1).index_select(0, torch.cat(index_parts))
        n_u = len(uniq)
        if self.value_space == "data":
            lo, scale, n_stats = torch.zeros(n_u, device=dev), torch.ones(n_u, device=dev), 0
        else:
            lo, n_stats = values[:n_u], 2 * n_u
            scale = values[n_u:2 * n_u] - lo + self.eps
        crops = []
        sizes = [math.prod(b) for _, b, _ in boxes]
        for (u, box, pads), vals in zip(boxes, values[n_stats:].split(sizes)):
            crop = (vals.view(box) - lo[u]) / scale[u]
            flat_pad = [v for pair in reversed(pads) for v in pair]  # F.pad wants last axis first
            if any(flat_pad):
                crop = F.pad(crop, flat_pad, mode="constant", value=0.0)
            crops.append(crop)
        return torch.stack(crops).unsqueeze(1)

    # ------------------------------------------------------------------ persistence
    def nbytes(self) -> int:
        """Bytes held by the template parameters (not counting gradients or optimiser state:
        with AdamW expect about 4x this during training)."""
        return self.templates.numel() * self.templates.element_size()

    def state(self) -> dict:
        """Everything needed to rebuild the templates exactly: a dict of plain Python values and
        one CPU tensor ``'templates'`` (M, GX, GY, GZ), loadable with ``torch.load(...,
        weights_only=True)``."""
        return {"format": STATE_FORMAT, "modalities": list(self.modalities),
                "grid_shape": list(self.grid_shape), "eps": self.eps,
                "position_free": self.position_free, "value_space": self.value_space,
                "templates": self.templates.detach().cpu().clone()}

    def load_state(self, state: Mapping) -> None:
        """Restore values saved by :meth:`state` in place (keeps the parameter object, so an
        optimiser holding it stays valid). Modalities and grid must match."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a template state (format {state.get('format')!r})")
        if tuple(state["modalities"]) != self.modalities or \
                tuple(state["grid_shape"]) != self.grid_shape:
            raise ValueError(f"template state holds {state['modalities']} on "
                             f"{state['grid_shape']}, these templates are {list(self.modalities)} "
                             f"on {list(self.grid_shape)}")
        with torch.no_grad():
            self.templates.copy_(state["templates"].to(self.templates.device))
        self.eps = float(state["eps"])
        self.position_free = str(state["position_free"])
        self.value_space = str(state.get("value_space", "minmax"))

    @classmethod
    def from_state(cls, state: Mapping) -> "ModalityTemplates":
        """New instance from :meth:`state` output (on CPU)."""
        obj = cls(state["grid_shape"], state["modalities"], eps=state["eps"],
                  position_free=state["position_free"], value_space=state.get("value_space", "minmax"))
        obj.load_state(state)
        return obj

    def export_nifti(self, folder: str, affine: Optional[np.ndarray] = None,
                     spacing: Optional[Sequence[float]] = None,
                     origin: Optional[Sequence[float]] = None,
                     transpose: Optional[Sequence[int]] = None, normalised: bool = True,
                     modalities: Optional[Sequence[str]] = None) -> List[str]:
        """Write ``template_<modality>.nii.gz`` per modality with nibabel, atomically.

        Args:
            folder: output folder (created).
            affine: 4x4 voxel-to-world matrix (nibabel / RAS+ convention) of the written array.
            spacing, origin: used when ``affine`` is None: ``diag(spacing)`` plus translation
                ``origin`` (defaults 1 mm, 0).
            transpose: axis permutation applied to each (GX, GY, GZ) volume before writing, e.g.
                (2, 1, 0) for arrays in SimpleITK's (z, y, x) order; ``affine`` refers to the
                permuted array.
            normalised: write the template as the network sees it (:meth:`volume`), else the
                raw parameter.
            modalities: subset to write (default all).

        Returns:
            list of written paths.
        """
        import nibabel as nib


        if affine is None:
            affine = np.eye(4)
            if spacing is not None:
                affine[:len(spacing), :len(spacing)] = np.diag([float(s) for s in spacing])
            if origin is not None:
                affine[:len(origin), 3] = [float(o) for o in origin]
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        os.makedirs(folder, exist_ok=True)
        names = self.modalities if modalities is None else [canonical(m) for m in modalities]
        paths = []
        with torch.no_grad():
            for m in names:
                row = self.modalities.index(m)
                vol = self.volume(m) if normalised else self.templates[row]
                arr = vol.detach().float().cpu().numpy()
                if transpose is not None:
                    arr = np.transpose(arr, tuple(transpose))
                img = nib.Nifti1Image(np.ascontiguousarray(arr, dtype=np.float32), affine)
                img.header.set_xyzt_units("mm")
                path = os.path.join(folder, f"template_{m}.nii.gz")
                with atomic_path(path) as tmp:
                    nib.save(img, tmp)
                paths.append(path)
        return paths
