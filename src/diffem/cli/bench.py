"""``diffem bench`` (run / resume a benchmark) and ``diffem bench-merge`` (merge shard folders)."""
from __future__ import annotations

import os

DEFAULT_DATASET = os.path.join("..", "shared", "data", "test", "CBSD68")
# The validation protocol of the kernel-estimation work: tune on one split, report on the other, never
# the reverse. Each preset fills the options not given on the command line.
PROTOCOLS = {
    "tune": dict(dataset=os.path.join("..", "shared", "data", "test", "CBSD68"), limit=16, crop=256,
                 kernels="tuning:33", sigmas="5,10"),
    # the realistic tuning split: other CBSD68 images × kernels estimated from real blurry photos
    "tune-real": dict(dataset=os.path.join("..", "shared", "data", "test", "CBSD68"), skip=16, limit=30, crop=256,
                      kernels="tuning-real:33", sigmas="5,10", kernel_root=os.path.join("..", "shared", "data", "kernels")),
    # clean recorded trajectories (Lai16-uniform, shrunk and turned) on yet other CBSD68 images (session 15)
    "tune-clean": dict(dataset=os.path.join("..", "shared", "data", "test", "CBSD68"), skip=46, limit=16, crop=256,
                       kernels="tuning-clean:33", sigmas="5,10"),
    "validate": dict(dataset=os.path.join("..", "shared", "data", "test", "McMaster"), limit=18, crop=256,
                     kernels="levin:33", sigmas="5,10"),
}
GENERAL_DEFAULTS = dict(dataset=DEFAULT_DATASET, skip=0, limit=None, crop=256, kernels="motion:33", sigmas="5,10,20",
                        kernel_root=None)


def register(sub):
    p = sub.add_parser(
        "bench", help="benchmark deblurring methods on a degraded dataset (resumable, shardable)",
        description="Degrade a dataset deterministically (centre crops, kernels, Gaussian noise), run each "
                    "method, append one JSON row per (image, σ, method) to OUT/results.jsonl as soon as it "
                    "finishes, and write OUT/summary.md, summary.csv and the PSNR-vs-runtime plot pareto.png. "
                    "Re-running with the same --out resumes. Sharding: --shard i/N, or torchrun (RANK/WORLD_SIZE) "
                    "or a SLURM array (SLURM_ARRAY_TASK_ID/COUNT); then `diffem bench-merge`.")
    p.add_argument("--protocol", default=None, choices=tuple(PROTOCOLS),
                   help="a preset split: 'tune' = first 16 CBSD68 crops (256²) × the tuning kernels (tuning:33: "
                        "USRNet motion + generator kernels) × σ 5,10; 'tune-real' = the next 30 CBSD68 crops × 30 "
                        "kernels estimated from real blurry photos (tuning-real:33, Lai et al. 2016, shrunk to 15-27 "
                        "px; ../shared/data/kernels) × σ 5,10; 'tune-clean' = the 16 CBSD68 crops after those × 16 clean "
                        "recorded trajectories (tuning-clean:33: Lai16-uniform, turned, shrunk to 17-27 px) × σ 5,10; "
                        "'validate' = 18 McMaster crops × the 8 Levin "
                        "kernels (levin:33, image i gets kernel i mod 8) × σ 5,10 — report on it, never tune on it")
    p.add_argument("--dataset", default=None, help=f"folder of ground-truth images (default {DEFAULT_DATASET})")
    p.add_argument("--out", default=None, help="output folder (created; reused to resume); required")
    p.add_argument("--methods", default="fast-em-pigdm",
                   help="comma-separated method specs name[:key=value,...], e.g. "
                        "'fast-em-pigdm:n=1,fast-em-pigdm:n=4,fast-em-dps,pigdm-nonblind' "
                        "(see --list-methods)")
    p.add_argument("--sigmas", default=None, help="noise levels on the 0..255 scale (default 5,10,20)")
    p.add_argument("--kernels", default=None,
                   help="generator:size[:key=value,...] (motion, handshake, gaussian, linear, mix), tuning:33, "
                        "tuning-real:33, tuning-clean:33 (see --protocol), a kernel set "
                        "(levin, usrnet, lai-uniform: shipped; optionally :SIZE) or a .npy file/folder (default motion:33)")
    p.add_argument("--kernel-root", default=None,
                   help="folder holding other kernel sets (<set>/npy/*.npy; default: the sets shipped with diffem)")
    p.add_argument("--crop", type=int, default=None, help="centre-crop size (0 = whole images; default 256)")
    p.add_argument("--limit", type=int, default=None, help="use the first N images (sorted by name)")
    p.add_argument("--skip", type=int, default=None, help="skip the first N images (sorted by name; default 0)")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: each method's own)")
    p.add_argument("--prior", default="default", help="prior name or checkpoint (default 'default')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--boundary", default="circular",
                   help="circular convolution (the authors' protocol) or 'valid' (real borders); the methods "
                        "use the same model")
    p.add_argument("--device", default="auto")
    p.add_argument("--shard", default=None, help="i/N: run only this shard (default: from torchrun/SLURM env)")
    p.add_argument("--no-save-outputs", action="store_true", help="do not save restored images and kernels")
    p.add_argument("--no-reference-metrics", action="store_true", help="skip NIQE / sharpness index / blur strength")
    p.add_argument("--no-error-ratio", action="store_true",
                   help="skip Levin's error ratio ER (it costs two PnP restorations per row with a kernel)")
    p.add_argument("--lpips-weights", default=None,
                   help="torchvision AlexNet/VGG-16 state dict (.pth) to compute LPIPS (skipped otherwise)")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex")
    p.add_argument("--lpips-lin", default=None, help="LPIPS v0.1 linear heads (default: from an installed lpips/torchmetrics)")
    p.add_argument("--fid-inception", default=None,
                   help="clean-fid inception-2015-12-05.pt TorchScript file to compute FID (skipped otherwise)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--list-methods", action="store_true", help="print the registered methods and exit")
    p.set_defaults(func=run_bench)

    m = sub.add_parser("bench-merge", help="merge benchmark shard folders into one summary",
                       description="Read results*.jsonl of every DIR (one row per image, σ, method; duplicates "
                                   "dropped) and write merged.jsonl, summary.md, summary.csv and pareto.png to --out.")
    m.add_argument("dirs", nargs="+", metavar="DIR")
    m.add_argument("--out", default=None, help="output folder (default: the first DIR)")
    m.add_argument("--fid-inception", default=None, help="Inception TorchScript file to compute FID")
    m.set_defaults(func=run_merge)


def run_bench(args) -> int:
    from diffem.benchmark import BenchConfig, available_methods, run_benchmark

    if args.list_methods:
        for name, desc in available_methods().items():
            print(f"{name:20s} {desc}")
        return 0
    if not args.out:
        raise ValueError("--out: an output folder is required")
    preset = {**GENERAL_DEFAULTS, **PROTOCOLS.get(args.protocol, {})}
    for name, value in preset.items():   # what the command line leaves unset
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.skip < 0:
        raise ValueError(f"--skip: expected >= 0, got {args.skip}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit: expected a positive integer, got {args.limit}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps: expected a positive integer, got {args.steps}")
    if args.crop < 0:
        raise ValueError(f"--crop: expected >= 0, got {args.crop}")
    cfg = BenchConfig(dataset=args.dataset, out=args.out, methods=args.methods, sigmas=args.sigmas,
                      kernels=args.kernels, crop=args.crop or None, limit=args.limit, skip=args.skip, steps=args.steps,
                      prior=args.prior, seed=args.seed, boundary=args.boundary, device=args.device,
                      shard=args.shard, kernel_root=args.kernel_root, save_outputs=not args.no_save_outputs,
                      no_reference=not args.no_reference_metrics, error_ratio=not args.no_error_ratio,
                      lpips_weights=args.lpips_weights,
                      lpips_net=args.lpips_net, lpips_lin=args.lpips_lin, fid_inception=args.fid_inception,
                      progress=not args.no_progress)
    res = run_benchmark(cfg)
    i, n = res["shard"]
    print(f"bench: {len(res['rows'])} rows written, {res['skipped']} already done, {len(res['errors'])} failed "
          f"(shard {i}/{n}, {res['jobs']} jobs) -> {args.out}")
    if res["summary"]:
        print(res["summary"]["markdown"])
        print(f"summary: {res['summary']['paths']['markdown']}, plot: {res['summary']['paths']['plot']}")
    elif n > 1:
        print(f"sharded run: merge with `diffem bench-merge {args.out}` when every shard has finished")
    return 1 if res["errors"] else 0


def run_merge(args) -> int:
    from diffem.benchmark import merge

    res = merge(args.dirs, args.out, args.fid_inception)
    print(res["markdown"])
    print(f"merged {len(res['rows'])} rows -> {res['paths']['markdown']}")
    return 0
