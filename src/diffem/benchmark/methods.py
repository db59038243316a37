"""Registry of benchmarkable methods.

A method is ``fn(y, sigma, kernel_size, true_kernel, seed, **opts) -> (image, kernel, extra)``:
  * y: (C,H,W) float tensor, the measurement on [0,1] (unclipped noise); sigma: noise std on [0,1];
  * kernel_size: the true kernel's size (blind methods estimate a kernel of that size);
  * true_kernel: (k,k) tensor — only non-blind *upper bounds* may use it;
  * seed: int, the method's seed for this item;
  * opts: the method spec's options (e.g. ``n``, ``steps``) plus the bench-wide ``prior`` (a loaded
    ``diffem.Prior``), ``steps`` (None = the method's default), ``device`` and ``progress``; ignore those
    you do not need (accept ``**opts``).
  * returns image (C,H,W) on [0,1], kernel (k,k) or None (non-blind / no estimate), and an ``extra`` dict
    (optional keys: ``samples`` (n,C,H,W) for PSNR SA, ``timings`` dict, anything JSON-serialisable).

Other modules add methods with ``register_method(name, fn)``. Names that are not registered when a
benchmark starts trigger one import of ``diffem.peers`` (whose ``__init__`` may register its methods).
"""
from __future__ import annotations

import importlib
from typing import Callable

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


def _load_plugins():
    try:
        importlib.import_module("diffem.peers")
    except ImportError:
        pass


def get_method(name: str) -> Callable:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"methods: unknown method {name!r} (registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def available_methods() -> dict[str, str]:
    _load_plugins()
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
        from diffem.api import deblur

        res = deblur(y, sigma, method=method, kernel_size=kernel_size, seed=seed, **_split_common(opts))
        return res.image, res.kernel, {"samples": res.samples, "timings": res.timings, "info": res.info}

    run.__doc__ = f"diffem.deblur(method='{method}') — blind"
    return run


def _nonblind(method: str):
    def run(y, sigma, kernel_size, true_kernel, seed, **opts):
        from diffem.api import restore

        res = restore(y, true_kernel, sigma, method=method, seed=seed, **_split_common(opts))
        return res.image, None, {"samples": res.samples, "timings": res.timings, "info": res.info}

    run.__doc__ = f"diffem.restore(method='{method}') with the true kernel — non-blind upper bound"
    return run


for _m in ("fast-em-pigdm", "fast-em-dps", "em-pigdm", "em-dps"):
    register_method(_m, _blind(_m))
for _m in ("pigdm", "dps"):
    register_method(f"{_m}-nonblind", _nonblind(_m))

NONBLIND = {"pigdm-nonblind", "dps-nonblind"}  # drawn with a different marker in the Pareto plot
