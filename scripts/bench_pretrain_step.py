"""BrainMVP training step against two plain masked-autoencoder steps (the issue's speed target).

A full BrainMVP step (``brainmvp_forward``: two views of B samples, 2B through the network, masks,
template crops, cross-modal fill, contrastive term) is timed against two plain MAE steps
(``mae_forward`` with batch B each, so the same 2B samples go through the same network). Every
step is zero_grad + forward + backward + AdamW step, one optimiser for both variants with the
network and the template bank in separate groups as ``nnUNetTrainerMMPretrain.configure_optimizers``.
Target: ``t_brainmvp / t_2xMAE - 1`` (the overhead beyond the 2x compute) under 10 %.

Also timed: the overhead part alone without the network (masks, template crop, fills; the
template gradient scatter and the template AdamW update, the latter also with ``fused=True`` as a
candidate fix, not counted in the total), the forward / backward / optimiser
phases of both variants, and the template bank's memory (parameters; x4 with gradient and AdamW
states), plus ``torch.cuda.max_memory_allocated`` per variant on CUDA.

The network is nnU-Net's ResidualEncoderUNet built with ``get_network_from_plans`` from a ResEnc-M
style architecture block, wrapped in ``MMPretrainNetwork`` (per-modality stems, light decoder,
projection head, templates). Presets (``--size``)::

    tiny     3 stages,  8..32,  patch 32^3,  batch 2, grid 96x112x96   (CPU default)
    small    4 stages, 16..128, patch 64^3,  batch 2, grid 96x112x96
    resencm  6 stages, 32..320, patch 128^3, batch 2, grid 155x240x240 (SRI24 atlas; GPU)

Variants are measured interleaved (ABBA order) so that load from other processes hits both.

Run::

    .venv/bin/python scripts/bench_pretrain_step.py [--size tiny] [--device cpu|cuda] [--iters 10]
        [--warmup 3] [--threads 2] [--grid X Y Z] [--patch P | X Y Z] [--fused-adamw] [--amp]
        [--plans PLANS.json -c CONFIG] [--out FILE]

``--plans``/``-c`` take architecture, patch and batch from a plans file (e.g. the ResEnc-M plan of
a corpus, as scripts/gpu_check.sh does); ``--amp`` runs both variants as the trainer does on a
GPU (float16 autocast and a GradScaler).

The tiny default takes about 20 s on 2 cores; on a busy machine use ``--threads 1`` (two torch
threads competing with another process gave 10 s iterations instead of 0.3 s).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_common import machine_info, print_table, write_result  # noqa: E402

from nnunet_mmpretrain.modalities import MODALITIES  # noqa: E402
from nnunet_mmpretrain.pretrain.cross_modal import cross_modal_fill  # noqa: E402
from nnunet_mmpretrain.pretrain.masking import apply_fill, block_mask  # noqa: E402
from nnunet_mmpretrain.pretrain.objectives import ObjectiveConfig  # noqa: E402
from nnunet_mmpretrain.pretrain.step import MaskSpec, PretrainBatch, brainmvp_forward, mae_forward  # noqa: E402

PRESETS = {
    "tiny": dict(features=(8, 16, 32), blocks=(1, 3, 4), patch=32, batch=2, grid=(96, 112, 96)),
    "small": dict(features=(16, 32, 64, 128), blocks=(1, 3, 4, 6), patch=64, batch=2, grid=(96, 112, 96)),
    "resencm": dict(features=(32, 64, 128, 256, 320, 320), blocks=(1, 3, 4, 6, 6, 6), patch=128, batch=2,
                    grid=(155, 240, 240)),
}
BRAIN_MODALITIES = [MODALITIES.index(m) for m in ("t1", "t1c", "t2", "flair")]
EPOCH, NUM_EPOCHS = 99, 100          # contrastive term on, template warm-up over
LR, WD, TEMPLATE_LR = 3e-4, 1e-5, 1e-3   # the trainer's defaults


def resenc_architecture(features, blocks) -> dict:
    """A plans ``architecture`` block as nnU-Net's ResEnc-M planner writes it."""
    n = len(features)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": {
            "n_stages": n, "features_per_stage": list(features), "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
            "n_blocks_per_stage": list(blocks), "n_conv_per_stage_decoder": [1] * (n - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def _die(message: str):
    """Bad input: one line, exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def plans_preset(plans_file: str, configuration: str) -> dict:
    """Architecture, patch and batch of one configuration of a plans file (``inherits_from`` followed)."""
    import json
    with open(plans_file) as f:
        configs = json.load(f)["configurations"]
    if configuration not in configs:
        _die(f"configuration {configuration!r} not in {plans_file} ({', '.join(configs)})")
    cfg, chain = dict(configs[configuration]), {configuration}
    while cfg.get("inherits_from") and cfg["inherits_from"] not in chain:
        chain.add(cfg["inherits_from"])
        parent = dict(configs[cfg.pop("inherits_from")])
        parent.update(cfg)
        cfg = parent
    arch = cfg["architecture"]
    return dict(features=tuple(arch["arch_kwargs"]["features_per_stage"]), arch=arch,
                patch=tuple(int(p) for p in cfg["patch_size"]), batch=int(cfg["batch_size"]), grid=(155, 240, 240))


def build(preset: dict, grid, device, fused: bool = False):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunet_mmpretrain.training.pretrain_network import MMPretrainNetwork
    arch = preset.get("arch") or resenc_architecture(preset["features"], preset["blocks"])
    base = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"],
                                  1, 2, allow_init=True, deep_supervision=False)
    net = MMPretrainNetwork(base, grid, arch["arch_kwargs"]["strides"], proj_dim=128).to(device)
    tmpl = list(net.templates.parameters())
    ids = {id(p) for p in tmpl}
    opt = torch.optim.AdamW([{"params": [p for p in net.parameters() if id(p) not in ids], "lr": LR,
                              "weight_decay": WD},
                             {"params": tmpl, "lr": TEMPLATE_LR, "weight_decay": 0.0}],
                            fused=True if fused else None)
    return net, opt


def make_batch(B, P, grid, device, gen):
    """z-scored-like intensities (brain ~ N(0, 1), a zero background corner), two different
    brain modalities per sample, random atlas starts inside the grid."""
    shape = (B, 1, *P)
    target = torch.randn(shape, generator=gen)
    partner = 0.8 * target + 0.6 * torch.randn(shape, generator=gen)   # co-registered, correlated
    target[..., : P[0] // 4, : P[1] // 4, :] = 0
    partner[..., : P[0] // 4, : P[1] // 4, :] = 0
    pair = torch.stack([torch.randperm(4, generator=gen)[:2] for _ in range(B)])
    slots = torch.tensor(BRAIN_MODALITIES)
    m_idx, n_idx = slots[pair[:, 0]], slots[pair[:, 1]]
    starts = torch.stack([torch.randint(0, g - p + 1, (B,), generator=gen) for g, p in zip(grid, P)], 1)
    return [t.to(device) for t in (target, partner, m_idx, n_idx)] + [starts]


class Timer:
    """Wall-clock phases, synchronising the GPU at each boundary."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.t = {}

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, name, fn):
        self.sync()
        t = time.perf_counter()
        out = fn()
        self.sync()
        self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - t
        return out


class Amp:
    """float16 autocast + GradScaler on CUDA as nnU-Net's trainers; a no-op when off."""

    def __init__(self, on: bool):
        self.on = on
        self.scaler = torch.amp.GradScaler("cuda") if on else None

    def forward(self, fn):
        if not self.on:
            return fn
        return lambda: _autocast(fn)

    def backward(self, loss):
        return (lambda: self.scaler.scale(loss).backward()) if self.on else loss.backward

    def step(self, opt):
        if not self.on:
            return opt.step
        return lambda: (self.scaler.step(opt), self.scaler.update())


def _autocast(fn):
    with torch.autocast("cuda", dtype=torch.float16):
        return fn()


NO_AMP = Amp(False)


def brainmvp_step(net, opt, batch, mask, objective, tm: Timer, amp: Amp = NO_AMP):
    target, partner, m_idx, n_idx, starts = batch
    opt.zero_grad(set_to_none=True)
    b = PretrainBatch(target, partner, m_idx, n_idx, starts)
    loss = tm("forward", amp.forward(lambda: brainmvp_forward(net, b, objective=objective, epoch=EPOCH,
                                                              num_epochs=NUM_EPOCHS, mask=mask,
                                                              templates=net.templates)[0]))
    tm("backward", amp.backward(loss))
    tm("optimizer", amp.step(opt))


def mae_steps(net, opt, batches, mask, tm: Timer, amp: Amp = NO_AMP):
    for target, _, m_idx, _, _ in batches:
        opt.zero_grad(set_to_none=True)
        loss = tm("forward", amp.forward(lambda: mae_forward(net, target, m_idx, mask)))
        tm("backward", amp.backward(loss))
        tm("optimizer", amp.step(opt))


def template_bank_optimizers(net):
    """Two template-only AdamW optimisers on copies of the bank (the trainer's template group, so
    the real one is left alone): torch's default implementation on this device, and ``fused=True``
    (a candidate fix where the template update dominates)."""
    copies = [torch.nn.Parameter(net.templates.templates.detach().clone()) for _ in range(2)]
    return {"default": torch.optim.AdamW([copies[0]], lr=TEMPLATE_LR, weight_decay=0.0),
            "fused": torch.optim.AdamW([copies[1]], lr=TEMPLATE_LR, weight_decay=0.0, fused=True)}


def overhead_only(net, batch, mask, tm: Timer, bank_opts):
    """What BrainMVP adds around the network, without it: the prep of both views (masks, template
    crop, fills), the template side of backward (gradient scatter into the bank) and the AdamW
    update of the bank (on a copy, with the gradient just computed)."""
    target, partner, m_idx, n_idx, starts = batch
    B, P = target.shape[0], tuple(target.shape[2:])

    def prep():
        m_md = block_mask(B, P, mask.block_size, mask.ratio, device=target.device)
        m_cmr = block_mask(B, P, mask.block_size, mask.ratio, device=target.device)
        tmpl = net.templates(m_idx, starts, P)
        fill = torch.where((n_idx < 0).view(-1, 1, 1, 1, 1), tmpl, partner)
        return torch.cat([apply_fill(target, m_md, tmpl), cross_modal_fill(target, fill, m_cmr)])

    views = tm("prep (masks+crop+fills)", prep)
    net.templates.templates.grad = None
    tm("template backward", lambda: views.sum().backward())
    for name, o in bank_opts.items():
        o.param_groups[0]["params"][0].grad = net.templates.templates.grad
        tm(f"template AdamW ({name})", o.step)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--patch", type=int, nargs="+", default=None, help="P (cubic) or X Y Z")
    ap.add_argument("--grid", type=int, nargs=3, default=None)
    ap.add_argument("--mask-ratio", type=float, default=0.875)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--amp", action="store_true", help="float16 autocast + GradScaler (CUDA only)")
    ap.add_argument("--plans", default=None, help="take architecture, patch and batch from this plans file")
    ap.add_argument("-c", default="3d_fullres", help="configuration of --plans (default 3d_fullres)")
    ap.add_argument("--fused-adamw", action="store_true",
                    help="AdamW(fused=True) for both variants, as nnUNetTrainerMMPretrain (default: torch's default AdamW)")
    ap.add_argument("--out", default=None, help="JSON result (default bench_output/bench_pretrain_step_<size>_<device>.json)")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        _die("--device cuda but torch sees no CUDA device")
    if args.amp and device.type != "cuda":
        _die("--amp needs --device cuda (nnU-Net trains without AMP on CPU)")
    if args.patch is not None and len(args.patch) not in (1, 3):
        _die("--patch takes one size (cubic) or three")
    amp = Amp(args.amp)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    preset = plans_preset(args.plans, args.c) if args.plans else dict(PRESETS[args.size])
    B = args.batch or preset["batch"]
    P = args.patch or preset["patch"]
    P = (P,) * 3 if isinstance(P, int) else tuple(P)
    P = tuple(int(p) for p in (P * 3 if len(P) == 1 else P))
    grid = tuple(max(g, p) for g, p in zip(args.grid or preset["grid"], P))   # templates cover a patch
    mask, objective = MaskSpec(args.mask_ratio, 8), ObjectiveConfig()
    result = {"machine": machine_info(), "config": {"size": args.plans or args.size, "device": str(device), "batch": B, "patch": list(P),
                                                    "grid": list(grid), "features": list(preset["features"]),
                                                    "iters": args.iters, "warmup": args.warmup,
                                                    "threads": torch.get_num_threads(), "mask": asdict(mask),
                                                    "epoch": EPOCH, "num_epochs": NUM_EPOCHS,
                                                    "fused_adamw": args.fused_adamw, "amp": args.amp}}
    print(f"load average at start: {result['machine']['load_average_start']} on {os.cpu_count()} cores; "
          f"torch threads {torch.get_num_threads()}", flush=True)

    net, opt = build(preset, grid, device, args.fused_adamw)
    n_tmpl = net.templates.templates.numel()
    n_net = sum(p.numel() for p in net.parameters()) - n_tmpl
    bank_mib = net.templates.nbytes() / 2 ** 20
    gen = torch.Generator().manual_seed(args.seed)

    mem = {}
    if device.type == "cuda":   # before the template copies of the overhead measurement exist
        steps = (("brainmvp", lambda b: brainmvp_step(net, opt, b, mask, objective, Timer(device), amp)),
                 ("2x_mae", lambda b: mae_steps(net, opt, [b, b], mask, Timer(device), amp)))
        for _, fn in steps:   # allocate the AdamW states of both groups first
            fn(make_batch(B, P, grid, device, gen))
        for name, fn in steps:
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            static = torch.cuda.memory_allocated()
            fn(make_batch(B, P, grid, device, gen))
            torch.cuda.synchronize()
            mem[name] = {"static_MiB": static / 2 ** 20, "peak_MiB": torch.cuda.max_memory_allocated() / 2 ** 20}

    tm_mvp, tm_mae, tm_ovh = Timer(device), Timer(device), Timer(device)
    bank_opts = template_bank_optimizers(net)
    per_iter = {"brainmvp": [], "2x_mae": [], "overhead_only": []}

    def one_round(timed: bool, order: int):
        batch = make_batch(B, P, grid, device, gen)
        mae_batches = [batch, make_batch(B, P, grid, device, gen)]
        runs = [("brainmvp", tm_mvp, lambda: brainmvp_step(net, opt, batch, mask, objective, tm_mvp, amp)),
                ("2x_mae", tm_mae, lambda: mae_steps(net, opt, mae_batches, mask, tm_mae, amp)),
                ("overhead_only", tm_ovh, lambda: overhead_only(net, batch, mask, tm_ovh, bank_opts))]
        if order % 2:
            runs = [runs[1], runs[0], runs[2]]
        for name, tm, fn in runs:
            before = sum(v for k, v in tm.t.items() if "fused" not in k)
            fn()
            if timed:
                per_iter[name].append(sum(v for k, v in tm.t.items() if "fused" not in k) - before)
            else:
                tm.t.clear()

    for i in range(args.warmup):
        one_round(False, i)
    for i in range(args.iters):
        one_round(True, i)
        print(f"  iter {i + 1}/{args.iters}: brainmvp {per_iter['brainmvp'][-1] * 1e3:.1f} ms, "
              f"2x MAE {per_iter['2x_mae'][-1] * 1e3:.1f} ms", flush=True)

    n = args.iters
    mean = {k: sum(v) / n for k, v in per_iter.items()}
    med = {k: statistics.median(v) for k, v in per_iter.items()}
    ratio_mean, ratio_med = mean["brainmvp"] / mean["2x_mae"], med["brainmvp"] / med["2x_mae"]
    result.update({
        "params": {"network_M": n_net / 1e6, "templates_M": n_tmpl / 1e6},
        "template_bank_MiB": bank_mib, "template_bank_with_grad_adamw_MiB": 4 * bank_mib,
        "per_iter_s": per_iter, "mean_s": mean, "median_s": med,
        "phases_mean_s": {"brainmvp": {k: v / n for k, v in tm_mvp.t.items()},
                          "2x_mae": {k: v / n for k, v in tm_mae.t.items()},
                          "overhead_only": {k: v / n for k, v in tm_ovh.t.items()}},
        "ratio_mean": ratio_mean, "ratio_median": ratio_med,
        "overhead_pct_mean": (ratio_mean - 1) * 100, "overhead_pct_median": (ratio_med - 1) * 100,
        "target_met": (ratio_med - 1) * 100 < 10.0, "cuda_memory": mem,
    })

    c = result["config"]
    title = (f"{args.plans + ' ' + args.c if args.plans else args.size}: {len(preset['features'])} stages "
             f"{list(preset['features'])}, patch {'x'.join(map(str, P))}, batch {B}, {'AMP, ' if args.amp else ''}grid "
             f"{'x'.join(map(str, grid))}, {device} ({c['threads']} threads), AdamW "
             f"{'fused' if args.fused_adamw else 'default'}; network {n_net / 1e6:.2f} M params, "
             f"templates {n_tmpl / 1e6:.2f} M; {n} iters after {args.warmup} warm-up")
    tables = [print_table(
        [("BrainMVP step (2 views, 2B)", mean["brainmvp"] * 1e3, med["brainmvp"] * 1e3,
          min(per_iter["brainmvp"]) * 1e3, max(per_iter["brainmvp"]) * 1e3),
         ("2 x MAE step (B each)", mean["2x_mae"] * 1e3, med["2x_mae"] * 1e3,
          min(per_iter["2x_mae"]) * 1e3, max(per_iter["2x_mae"]) * 1e3),
         ("overhead alone (no network)", mean["overhead_only"] * 1e3, med["overhead_only"] * 1e3,
          min(per_iter["overhead_only"]) * 1e3, max(per_iter["overhead_only"]) * 1e3)],
        ["variant", "mean ms", "median ms", "min ms", "max ms"], title)]
    ph = result["phases_mean_s"]
    names = ["forward", "backward", "optimizer"]
    tables.append(print_table(
        [(k, *[ph[k].get(p, 0.0) * 1e3 for p in names]) for k in ("brainmvp", "2x_mae")]
        + [("overhead alone", ph["overhead_only"]["prep (masks+crop+fills)"] * 1e3,
            ph["overhead_only"]["template backward"] * 1e3, ph["overhead_only"]["template AdamW (default)"] * 1e3)],
        ["variant", "forward ms", "backward ms", "AdamW step ms"],
        "phases (mean per iteration; overhead alone: forward = masks + template crop + fills, backward = gradient "
        "into the bank, AdamW = template group only)"))
    fused_ms = ph["overhead_only"]["template AdamW (fused)"] * 1e3
    rows = [("ratio t_brainmvp / t_2xMAE", f"{ratio_med:.3f} (median), {ratio_mean:.3f} (mean)"),
            ("overhead beyond 2x compute", f"{(ratio_med - 1) * 100:+.1f} % (median), {(ratio_mean - 1) * 100:+.1f} % (mean)"),
            ("target < 10 %", "met" if result["target_met"] else "NOT met"),
            ("template AdamW step: default / fused=True", f"{ph['overhead_only']['template AdamW (default)'] * 1e3:.1f} / {fused_ms:.1f} ms"),
            ("template bank (fp32 params)", f"{bank_mib:.1f} MiB"),
            ("template bank + grad + AdamW states (x4)", f"{4 * bank_mib:.1f} MiB")]
    rows += [(f"CUDA {k}: static / peak allocated", f"{v['static_MiB']:.0f} / {v['peak_MiB']:.0f} MiB")
             for k, v in mem.items()]
    tables.append(print_table(rows, ["quantity", "value"], "summary"))
    result["tables"] = tables
    write_result(args.out, f"bench_pretrain_step_{'plans' if args.plans else args.size}_{device.type}", result)


if __name__ == "__main__":
    main()
