"""``diffem kernels`` (render generated kernels as a grid PNG), ``diffem train-kernel-denoiser`` and
``diffem fig4`` (the paper's Figure 4: kernel regularisers vs noise)."""
from __future__ import annotations

import os

from diffem.cli import CLIError


def _kernels(args) -> int:
    from diffem.kernels.generators import GENERATORS, make_generator
    from diffem.kernels.loaders import load_kernel_set
    from diffem.kernels.plot import save_kernel_grid

    if args.n < 1:
        raise CLIError(f"-n must be >= 1, got {args.n}")
    params = {}
    if args.intensity is not None:
        if args.generator not in ("motion",):
            raise CLIError("--intensity applies to --generator motion only")
        params["intensity"] = args.intensity
    if args.set:
        ks = load_kernel_set(args.set, args.size, root=args.root, too_large="skip")[: args.n]
        title = f"{args.set} ({args.size}x{args.size})"
    else:
        if args.generator not in GENERATORS:
            raise CLIError(f"--generator: unknown name {args.generator!r} (choose from {', '.join(GENERATORS)})")
        ks = make_generator(args.generator, args.size, seed=args.seed, **params).step(args.n)
        title = f"{args.generator} ({args.size}x{args.size}, seed {args.seed})"
    out = args.output
    if os.path.isdir(out):
        raise CLIError(f"-o: {out!r} is a folder; give a .png file name")
    save_kernel_grid(ks, out, title=title)
    if args.save_npy:
        from diffem.files import write_npy
        write_npy(args.save_npy, ks.numpy())
    print(f"wrote {out} ({len(ks)} kernels)")
    return 0


def _train(args) -> int:
    from diffem.kernels.train import train_kernel_denoiser

    sigma_range = None
    if args.sigma_min is not None or args.sigma_max is not None:
        if args.sigma_min is None or args.sigma_max is None:
            raise CLIError("--sigma-min and --sigma-max go together")
        sigma_range = (args.sigma_min, args.sigma_max)
    out = args.output or f"kernel_denoiser_{args.size}.safetensors"
    train_kernel_denoiser(args.size, out=out, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                          crop=(None if args.crop == 0 else args.crop or max(24, args.size // 2)), pool_size=args.pool_size,
                          sigma_range=sigma_range, seed=args.seed, bias=not args.bias_free,
                          resume=not args.no_resume, threads=args.threads)
    return 0


def _fig4(args) -> int:
    from diffem.kernels.fig4 import run_fig4

    run_fig4(images=args.images, sizes=args.sizes, sigmas255=args.sigmas, n_images=args.n_images,
             n_kernels=args.n_kernels, crop=args.crop, out_png=args.output, out_md=args.markdown,
             tune=args.tune, seed=args.seed, threads=args.threads)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("kernels", help="render generated (or public) blur kernels as a grid PNG",
                              description="Render kernels from a generator (or a public set) as a PNG grid.")
    p.add_argument("--generator", default="motion", help="motion, handshake, gaussian, linear or mix (default motion)")
    p.add_argument("--set", default=None, help="render a public kernel set instead (levin09, usrnet, lai-uniform "
                   "are shipped; USRNet_large, Lai16_real_estimates need --root)")
    p.add_argument("--root", default=None, help="folder holding other kernel sets (with --set)")
    p.add_argument("--size", type=int, default=33, help="kernel size (default 33)")
    p.add_argument("-n", type=int, default=16, help="number of kernels (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--intensity", type=float, default=None, help="motion generator intensity in [0, 1] (default 0.5)")
    p.add_argument("-o", "--output", default="kernels.png", help="output PNG (default kernels.png)")
    p.add_argument("--save-npy", default=None, help="also save the kernels as an (n, k, k) .npy file")
    p.set_defaults(func=_kernels)

    t = subparsers.add_parser("train-kernel-denoiser", help="train the Plug-&-Play kernel denoiser",
                              description="Train the kernel denoiser on generated kernels (resumable).")
    t.add_argument("--size", type=int, default=33, help="kernel size (default 33)")
    t.add_argument("-o", "--output", default=None, help="weights file (default kernel_denoiser_SIZE.safetensors)")
    t.add_argument("--iterations", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--crop", type=int, default=None,
                   help="train on random CROPxCROP windows (default max(24, size/2); 0: whole kernels)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--pool-size", type=int, default=6000, help="number of generated training kernels")
    t.add_argument("--sigma-min", type=float, default=None)
    t.add_argument("--sigma-max", type=float, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--bias-free", action="store_true", help="no biases in the convolutions")
    t.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    t.add_argument("--threads", type=int, default=None)
    t.set_defaults(func=_train)

    f = subparsers.add_parser("fig4", help="paper Figure 4: kernel MSE of l1 / l2 / PnP regularisers vs noise",
                              description="Kernel estimation with known sharp and blurry images (HQS M-step), "
                                          "l1 vs l2 vs PnP, as a function of the noise level.")
    f.add_argument("--images", default=os.path.join("..", "shared", "data", "test", "CBSD68"),
                   help="folder of test images (default: CBSD68 in the project's shared data folder)")
    f.add_argument("--sizes", type=int, nargs="+", default=[33, 64])
    f.add_argument("--sigmas", type=float, nargs="+", default=[0, 2.5, 5, 10, 15, 20],
                   help="noise levels in /255 units")
    f.add_argument("--n-images", type=int, default=6)
    f.add_argument("--n-kernels", type=int, default=3)
    f.add_argument("--crop", type=int, default=128, help="square crop size of the test images")
    f.add_argument("--tune", action="store_true", help="re-run the λ grid search instead of the documented values")
    f.add_argument("-o", "--output", default="docs/figures/kernels_fig4.png")
    f.add_argument("--markdown", default="docs/benchmarks/kernels.md",
                   help="markdown file; the table replaces its <!-- fig4 --> block")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=None)
    f.set_defaults(func=_fig4)
