"""Parsing of the benchmark's command-line specs.

Method list: ``name[:key=value,...]`` items separated by commas, e.g.
``fast-em-pigdm:n=4,steps=50,dps-nonblind`` = [fast-em-pigdm {n: 4, steps: 50}, dps-nonblind {}].
A comma-separated token that contains ``=`` and no ``:`` continues the options of the method before it.
Values are parsed as int, float, true/false/none, else kept as strings.

Sigma list: ``5,10,20`` on the 0..255 scale (the paper's convention); σ = s/255 on [0,1].
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field


def parse_value(v: str):
    low = v.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


@dataclass
class MethodSpec:
    name: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Canonical text of the spec (also the row key): options in the order given."""
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.options.items())

    @property
    def slug(self) -> str:
        """A file-name-safe version of the label."""
        return re.sub(r"[^A-Za-z0-9._=-]+", "_", self.label.replace(":", "__"))


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "none"
    return str(v)


def parse_methods(text: str) -> list[MethodSpec]:
    if not text or not text.strip():
        raise ValueError("methods: empty method list")
    specs: list[MethodSpec] = []
    for raw in text.split(","):
        tok = raw.strip()
        if not tok:
            continue
        if ":" in tok:
            name, opt = tok.split(":", 1)
            spec = MethodSpec(name.strip())
            specs.append(spec)
            if opt.strip():
                _add_option(spec, opt)
        elif "=" in tok:
            if not specs:
                raise ValueError(f"methods: option {tok!r} comes before any method name")
            _add_option(specs[-1], tok)
        else:
            specs.append(MethodSpec(tok))
    for s in specs:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", s.name):
            raise ValueError(f"methods: bad method name {s.name!r}")
    labels = [s.label for s in specs]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    if dup:
        raise ValueError(f"methods: duplicated method spec(s) {sorted(dup)}")
    return specs


def _add_option(spec: MethodSpec, tok: str):
    if "=" not in tok:
        raise ValueError(f"methods: expected key=value in {tok!r} (method {spec.name})")
    k, v = tok.split("=", 1)
    k = k.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
        raise ValueError(f"methods: bad option name {k!r} (method {spec.name})")
    spec.options[k] = parse_value(v.strip())


def parse_sigmas(text) -> list[float]:
    """'5,10,20' -> [5.0, 10.0, 20.0] (0..255 scale)."""
    if isinstance(text, (list, tuple)):
        vals = [float(v) for v in text]
    else:
        try:
            vals = [float(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"sigmas: expected comma-separated numbers on the 0..255 scale, got {text!r}") from None
    if not vals or any(not (v > 0) or v > 255 for v in vals):
        raise ValueError(f"sigmas: expected values in (0, 255] (noise std on the 0..255 scale), got {text!r}")
    return vals


def parse_shard(text: str) -> tuple[int, int]:
    """'i/N' with 0 <= i < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"shard: expected i/N with 0 <= i < N, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def sigma_tag(s255: float) -> str:
    """File-name tag of a σ: 's10', 's2.5'."""
    return "s" + (f"{s255:g}")
