"""``diffem train-prior`` and ``diffem convert-checkpoint``."""
from __future__ import annotations

import argparse
import json
import os


def _train_prior(args) -> int:
    from diffem.priors.train import TrainConfig, export_ema, train

    if args.export_only:
        if not args.export:
            raise ValueError("--export-only: give --export PATH")
        info = export_ema(args.out, args.export)
        print(f"exported EMA weights of step {info['step']} to {args.export}")
        return 0
    cfg = TrainConfig(data=args.data, out=args.out, crop=args.crop, batch=args.batch, lr=args.lr,
                      warmup=args.warmup, ema=args.ema, steps=args.steps, max_minutes=args.max_minutes,
                      save_minutes=args.save_minutes, seed=args.seed, device=args.device, bf16=False if args.fp32 else None,
                      channels_last=False if args.fp32 else None, threads=args.threads,
                      decay_start=args.decay_start)
    for name in ("crop", "batch", "steps"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name}: must be positive")
    if cfg.decay_start is not None and not 0 <= cfg.decay_start < cfg.steps:
        raise ValueError("--decay-start: must be in [0, --steps)")
    overrides = json.loads(args.adm) if args.adm else None
    result = train(cfg, adm_overrides=overrides, progress=not args.quiet)
    print(f"stopped ({result['stopped']}) at step {result['step']}, {result['elapsed'] / 60:.1f} min trained, "
          f"loss (EMA) {result['loss_ema']:.4f}")
    if args.export:
        export_ema(args.out, args.export)
        print(f"exported EMA weights to {args.export}")
    return 0


def _convert(args) -> int:
    from diffem.priors.adm import convert_checkpoint

    if not args.output.endswith(".safetensors"):
        raise ValueError("OUT: must end with .safetensors")
    if os.path.exists(args.output) and not args.force:
        raise ValueError(f"OUT: {args.output!r} exists (use --force to replace it)")
    overrides = json.loads(args.adm) if args.adm else {}
    info = convert_checkpoint(args.input, args.output, preset=args.preset, check=not args.no_check, **overrides)
    print(f"wrote {args.output}: {info['tensors']} tensors, {info['parameters']:,} parameters")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train-prior", help="train the small natural-image diffusion prior",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="../shared/data/train/CBSD432", help="folder of training photos")
    p.add_argument("--out", default="runs/prior", help="run folder (resumes if it holds a run)")
    p.add_argument("--steps", type=int, default=100_000, help="total optimisation steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this many minutes")
    p.add_argument("--save-minutes", type=float, default=5.0, help="checkpoint interval")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--decay-start", type=int, default=None,
                   help="from this step on, cosine decay of the learning rate to 0 at --steps (may be set on resume)")
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast / channels_last (default: bf16 only where the CPU/GPU supports it natively)")
    p.add_argument("--adm", default=None, help='JSON of ADM flags overriding the default architecture, e.g. \'{"num_channels": 64}\'')
    p.add_argument("--export", default=None, help="write the EMA weights as .safetensors here when done")
    p.add_argument("--export-only", action="store_true", help="only export the run's current EMA weights")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_train_prior)

    c = subparsers.add_parser("convert-checkpoint", help="convert a guided-diffusion .pt to .safetensors")
    c.add_argument("input", metavar="IN.pt")
    c.add_argument("output", metavar="OUT.safetensors")
    c.add_argument("--preset", default=None, help="ADM preset (ffhq256, imagenet256-uncond); guessed if omitted")
    c.add_argument("--adm", default=None, help="JSON of ADM flags for a non-preset checkpoint")
    c.add_argument("--no-check", action="store_true", help="do not check that the tensors build an ADM")
    c.add_argument("--force", action="store_true", help="replace OUT if it exists")
    c.set_defaults(func=_convert)
