"""Reading result rows, summary tables (markdown + CSV) and the PSNR-vs-runtime Pareto plot."""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os

import numpy as np

from diffem.files import atomic_write, write_text

# (row key, column title, format)
METRICS = [
    ("psnr", "PSNR", "{:.2f}"),
    ("psnr_sa", "PSNR SA", "{:.2f}"),
    ("psnr_blurry", "blurry", "{:.2f}"),
    ("gain", "gain (dB)", "{:+.2f}"),
    ("worse", "worse than input", "{:.0%}"),
    ("gain_up_to_shift", "gain up to shift", "{:+.2f}"),
    ("worse_up_to_shift", "worse up to shift", "{:.0%}"),
    ("er", "ER", "{:.2f}"),
    ("er_le2", "ER≤2", "{:.0%}"),
    ("er_le3", "ER≤3", "{:.0%}"),
    ("er_unaligned", "ER (no shift)", "{:.2f}"),
    ("ssim", "SSIM", "{:.3f}"),
    ("lpips", "LPIPS", "{:.3f}"),
    ("kernel_mse", "kernel MSE", "{:.2e}"),
    ("kernel_mse_aligned", "kernel MSE (aligned)", "{:.2e}"),
    ("reblur", "reblur", "{:.2e}"),
    ("niqe", "NIQE", "{:.2f}"),
    ("sharpness_index", "SI", "{:.1f}"),
    ("blur_strength", "blur str.", "{:.3f}"),
    ("time_s", "time/img (s)", "{:.2f}"),
    ("cpu_s", "CPU s/img", "{:.2f}"),
    ("peak_rss_mb", "peak RSS (MB)", "{:.0f}"),
    ("peak_cuda_mb", "peak GPU (MB)", "{:.0f}"),
]


def row_key(row: dict) -> tuple:
    return (row["image"], float(row["sigma255"]), row["method"])


def read_jsonl(path: str) -> list[dict]:
    """Rows of one results file; an unparsable line (a run killed mid-write) is skipped."""
    rows = []
    with open(path, "rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def result_files(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "results*.jsonl")))


def load_rows(directories) -> list[dict]:
    """All rows of results*.jsonl in the given folders, one per (image, σ, method) (the first seen wins)."""
    if isinstance(directories, str):
        directories = [directories]
    seen, rows = set(), []
    for d in directories:
        if not os.path.isdir(d):
            raise ValueError(f"not a benchmark folder: {d}")
        for p in result_files(d):
            for r in read_jsonl(p):
                k = row_key(r)
                if k not in seen:
                    seen.add(k)
                    rows.append(r)
    return rows


def _mean(vals):
    v = [float(x) for x in vals if x is not None and not (isinstance(x, float) and math.isnan(x))]
    v = [x for x in v if math.isfinite(x)]
    return float(np.mean(v)) if v else None


def summarise(rows: list[dict], method_order: list[str] | None = None) -> list[dict]:
    """Mean of each metric per (method, σ), then per method over all σ (sigma255 = 'all')."""
    methods = list(method_order or [])
    for r in rows:
        if r["method"] not in methods:
            methods.append(r["method"])
    sigmas = sorted({float(r["sigma255"]) for r in rows})
    out = []
    for m in methods:
        mrows = [r for r in rows if r["method"] == m]
        if not mrows:
            continue
        groups = [(s, [r for r in mrows if float(r["sigma255"]) == s]) for s in sigmas]
        groups.append(("all", mrows))
        for s, g in groups:
            if not g:
                continue
            entry = {"method": m, "sigma255": s if s == "all" else f"{s:g}", "count": len(g),
                     "images": len({r["image"] for r in g})}
            for key, _, _ in METRICS:
                entry[key] = _mean(r.get(key) for r in g)
            out.append(entry)
    return out


def to_markdown(summary: list[dict], title: str = "") -> str:
    cols = [(k, t, f) for k, t, f in METRICS if any(e.get(k) is not None for e in summary)]
    buf = io.StringIO()
    if title:
        buf.write(f"{title}\n\n")
    buf.write("| method | σ (/255) | n | " + " | ".join(t for _, t, _ in cols) + " |\n")
    buf.write("|---|---|---|" + "---|" * len(cols) + "\n")
    for e in summary:
        cells = ["—" if e.get(k) is None else f.format(e[k]) for k, _, f in cols]
        method = f"**{e['method']}**" if e["sigma255"] == "all" else e["method"]
        buf.write(f"| {method} | {e['sigma255']} | {e['count']} | " + " | ".join(cells) + " |\n")
    return buf.getvalue()


def write_csv(summary: list[dict], path: str):
    keys = ["method", "sigma255", "count", "images"] + [k for k, _, _ in METRICS]
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for e in summary:
        w.writerow({k: ("" if e.get(k) is None else e[k]) for k in keys})
    write_text(path, buf.getvalue())


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated by another (less time and more PSNR), sorted by time."""
    idx = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in idx:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_plot(summary: list[dict], path: str, nonblind: set[str] | None = None, title: str | None = None):
    """The paper's Figure 1: mean PSNR vs mean runtime per image (log scale), one point per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nonblind = nonblind or set()
    pts = [(e["method"], e["time_s"], e["psnr"]) for e in summary
           if e["sigma255"] == "all" and e.get("time_s") and e.get("psnr") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    if pts:
        blind = [p for p in pts if p[0].split(":")[0] not in nonblind]
        nb = [p for p in pts if p[0].split(":")[0] in nonblind]
        if blind:
            ax.scatter([p[1] for p in blind], [p[2] for p in blind], c="tab:blue", label="blind", zorder=3)
            front = pareto_front([(p[1], p[2]) for p in blind])
            ax.plot([blind[i][1] for i in front], [blind[i][2] for i in front], "--", c="tab:blue", alpha=0.6,
                    label="Pareto front (blind)")
        if nb:
            ax.scatter([p[1] for p in nb], [p[2] for p in nb], marker="s", c="tab:gray",
                       label="non-blind (true kernel)", zorder=3)
        for name, t, p in pts:
            ax.annotate(name, (t, p), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        times = [p[1] for p in pts]
        decades = math.log10(max(times) / min(times)) if len(times) > 1 else 0.0
        # 1-2-5 labels over a few decades; decades only when instant baselines stretch the axis
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.25, y=0.15)
        ax.legend(fontsize=7, loc="best")
    else:
        ax.text(0.5, 0.5, "no rows with PSNR and runtime", ha="center", transform=ax.transAxes)
    ax.set_xlabel("runtime per image (s, log scale)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title or "PSNR vs runtime (mean over images and σ)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def write_summary(rows: list[dict], out_dir: str, method_order=None, extra_md: str = "",
                  title: str = "diffem benchmark summary", fid: dict | None = None) -> dict:
    """summary.md, summary.csv and pareto.png in out_dir. Returns their paths and the table."""
    from diffem.benchmark.methods import NONBLIND

    summary = summarise(rows, method_order)
    if fid:
        for e in summary:
            if e["sigma255"] == "all" and e["method"] in fid:
                e["fid"] = fid[e["method"]]
    os.makedirs(out_dir, exist_ok=True)
    md = to_markdown(summary, f"# {title}\n\n{len(rows)} rows. Means over images; bold rows average all σ.")
    if fid:
        md += "\nFID (all σ, against the ground-truth crops): " + ", ".join(
            f"{m}: {v:.2f}" for m, v in fid.items()) + "\n"
    md += extra_md
    paths = {"markdown": os.path.join(out_dir, "summary.md"), "csv": os.path.join(out_dir, "summary.csv"),
             "plot": os.path.join(out_dir, "pareto.png")}
    write_text(paths["markdown"], md)
    write_csv(summary, paths["csv"])
    pareto_plot(summary, paths["plot"], NONBLIND)
    return {"paths": paths, "summary": summary, "markdown": md}


def merge(directories, out_dir: str | None = None, fid_inception: str | None = None) -> dict:
    """Merge shard folders into one summary (and merged.jsonl) in out_dir (default: the first folder)."""
    directories = list(directories)
    if not directories:
        raise ValueError("bench-merge: give at least one benchmark folder")
    rows = load_rows(directories)
    out_dir = out_dir or directories[0]
    os.makedirs(out_dir, exist_ok=True)
    write_text(os.path.join(out_dir, "merged.jsonl"), "".join(json.dumps(r) + "\n" for r in rows))
    order = None
    cfg_path = os.path.join(directories[0], "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            order = json.load(f).get("methods")
    fid = compute_fid(rows, directories, fid_inception) if fid_inception else None
    res = write_summary(rows, out_dir, method_order=order, fid=fid)
    res["rows"] = rows
    return res


def compute_fid(rows, directories, inception_path) -> dict:
    """FID per method between its saved outputs and the ground-truth crops (all σ pooled)."""
    import torch

    from diffem.benchmark.data import load_rgb
    from diffem.metrics.fid import InceptionFeatures, fid_from_features

    net = InceptionFeatures(inception_path)
    out = {}

    def find(rel):
        for d in directories:
            p = os.path.join(d, rel)
            if os.path.exists(p):
                return p
        return None

    gt_files = sorted({r["gt_png"] for r in rows if r.get("gt_png")})
    gts = [find(p) for p in gt_files]
    gts = [p for p in gts if p]
    if len(gts) < 2:
        return out
    f_gt = np.concatenate([net(torch.stack([load_rgb(p)])) for p in gts])
    for m in dict.fromkeys(r["method"] for r in rows):
        outs = [find(r["output_png"]) for r in rows if r["method"] == m and r.get("output_png")]
        outs = [p for p in outs if p]
        if len(outs) >= 2:
            f = np.concatenate([net(torch.stack([load_rgb(p)])) for p in outs])
            out[m] = fid_from_features(f, f_gt)
    return out
