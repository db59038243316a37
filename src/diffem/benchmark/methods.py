"""The registry of benchmarkable methods. Every method diffem ships is listed here, with explicit
imports (diffem's samplers and the peers of ``diffem.peers``, which know nothing of the benchmark);
other code adds its own with ``register_method(name, fn)``.

A method is ``fn(y, sigma, kernel_size, true_kernel, seed, **opts) -> (image, kernel, extra)``:
  * y: (C,H,W) float tensor, the measurement on [0,1] (unclipped noise); sigma: noise std on [0,1];
  * kernel_size: the true kernel's size (blind methods estimate a kernel of that size);
  * true_kernel: (k,k) tensor — only non-blind *upper bounds* may use it;
  * seed: int, the method's seed for this item;
  * opts: the method spec's options (e.g. ``n``, ``steps``) plus the bench-wide ``prior`` (a loaded
    ``diffem.Prior``), ``steps`` (None = the method's default), ``device``, ``progress`` and
    ``boundary`` (the measurement's model, 'circular' or 'valid': a method must use it); ignore those
    you do not need (accept ``**opts``).
  * returns image (C,H,W) on [0,1], kernel (k,k) or None (non-blind / no estimate), and an ``extra`` dict
    (optional keys: ``samples`` (n,C,H,W) for PSNR SA, ``timings`` dict, anything JSON-serialisable).
"""
from __future__ import annotations

import time
from typing import Callable

from diffem.api import BLIND_METHODS, NONBLIND_METHODS, deblur, restore
from diffem.peers import baselines, blinddps, l0

_REGISTRY: dict[str, Callable] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_method(name: str, fn: Callable, description: str = "", overwrite: bool = True) -> Callable:
    if not callable(fn):
        raise ValueError(f"fn: method {name!r} is not callable")
    if not overwrite and name in _REGISTRY:
        raise ValueError(f"name: method {name!r} is already registered")
    _REGISTRY[name] = fn
    _DESCRIPTIONS[name] = description or (fn.__doc__ or "").strip().split("\n")[0]
    return fn


def unregister_method(name: str) -> None:
    _REGISTRY.pop(name, None)
    _DESCRIPTIONS.pop(name, None)


def get_method(name: str) -> Callable:
    if name not in _REGISTRY:
        raise ValueError(f"methods: unknown method {name!r} (registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def available_methods() -> dict[str, str]:
    return dict(sorted(_DESCRIPTIONS.items()))


def _split_common(opts: dict) -> dict:
    """Map bench-level names onto diffem.deblur/restore keywords (n -> n_particles)."""
    opts = dict(opts)
    if "n" in opts:
        opts["n_particles"] = opts.pop("n")
    opts.setdefault("progress", False)
    if opts.get("steps") is None:
        opts.pop("steps", None)  # keep the method's own default (100 for ΠGDM, 1000 for DPS)
    return opts


def _blind(method: str):
    def run(y, sigma, kernel_size, true_kernel, seed, **opts):
        res = deblur(y, sigma, method=method, kernel_size=kernel_size, seed=seed, **_split_common(opts))
        return res.image, res.kernel, {"samples": res.samples, "timings": res.timings, "info": res.info}

    run.__doc__ = f"diffem.deblur(method='{method}') — blind"
    return run


def _nonblind(method: str):
    def run(y, sigma, kernel_size, true_kernel, seed, **opts):
        res = restore(y, true_kernel, sigma, method=method, seed=seed, **_split_common(opts))
        return res.image, None, {"samples": res.samples, "timings": res.timings, "info": res.info}

    run.__doc__ = f"diffem.restore(method='{method}') with the true kernel — non-blind upper bound"
    return run


def _l0(y, sigma, kernel_size, true_kernel=None, seed=0, *, progress=False, boundary="circular", l0_options=None,
        **opts):
    """Anger et al. l0-gradient blind deblurring (IPOL 243)"""
    t0 = time.perf_counter()
    kw = dict(l0_options or {})
    kw.update({k: opts[k] for k in ("high_noise",) if k in opts})
    image, kernel = l0.deblur_l0(y, sigma, kernel_size, progress=progress, boundary=boundary, **kw)
    return image, kernel, {"timings": {"run_s": time.perf_counter() - t0}}


def _blind_dps(y, sigma, kernel_size, true_kernel=None, seed=0, *, prior="default", steps=None, progress=False,
               device="cpu", boundary="circular", **opts):
    """BlindDPS: joint image/kernel DPS with the bench prior and the shipped kernel diffusion model"""
    t0 = time.perf_counter()
    kw = {k: opts[k] for k in ("reg", "scale", "kernel_scale", "kernel_prior") if k in opts}
    image, kernel = blinddps.deblur_blind_dps(y, sigma, prior=prior, kernel_size=kernel_size,
                                              steps=1000 if steps is None else steps, seed=seed, progress=progress,
                                              device=device, boundary=boundary, **kw)
    return image, kernel, {"timings": {"run_s": time.perf_counter() - t0}}


def _blurry(y, sigma, kernel_size, true_kernel=None, seed=0, **opts):
    """The blurry input itself (kernel = delta)"""
    image, kernel = baselines.blurry_baseline(y, sigma, kernel_size)
    return image, kernel, {}


def _gauss_pigdm(y, sigma, kernel_size, true_kernel=None, seed=0, *, prior="default", steps=None, progress=False,
                 device="cpu", boundary="circular", **opts):
    """Non-blind PiGDM with the best-fitting isotropic Gaussian kernel"""
    t0 = time.perf_counter()
    image, kernel, width = baselines.gauss_pigdm(y, sigma, kernel_size, prior=prior,
                                                 steps=100 if steps is None else steps, seed=seed,
                                                 progress=progress, device=device, boundary=boundary)
    return image, kernel, {"gaussian_width": width, "timings": {"run_s": time.perf_counter() - t0}}


for _m in BLIND_METHODS:
    register_method(_m, _blind(_m))
for _m in NONBLIND_METHODS:
    register_method(f"{_m}-nonblind", _nonblind(_m))
for _name, _fn in {"l0": _l0, "blind-dps": _blind_dps, "blurry": _blurry, "gauss-pigdm": _gauss_pigdm}.items():
    register_method(_name, _fn)

NONBLIND = {f"{m}-nonblind" for m in NONBLIND_METHODS}  # drawn with a different marker in the Pareto plot
