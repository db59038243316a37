"""Lai16 real photos (issue 13): a contact sheet and a no-reference score of `diffem deblur` (every default).

    python benchmarks/contact_sheet.py --out docs/figures/lai16_real_contact_sheet.png [--outputs DIR] [--limit N]
    python benchmarks/contact_sheet.py nr [--outputs DIR] [--limit N]

Both run `diffem deblur PHOTO -o DIR --quiet` (a subprocess, --threads torch threads) on each photo whose
DIR/NAME_deblurred.png or DIR/NAME_kernel.npy is missing, and reuse the outputs already there; each run
appends its wall time and peak RSS to DIR/runs.jsonl. Scores are cached in DIR/nr.jsonl (resumable).

The sheet: 12 photos, one row each, input | output | kernel. They are chosen round-robin over the
categories (manmade, natural, people, saturated, text): each category in turn takes its first photo in
attribute.txt order not taken yet (a photo can have several categories), until 12.

No-reference measures (diffem.metrics): the sharpness index (Blanchet-Moisan; higher = sharper) and
NIQE (diffem's own fit on CBSD432; lower = better), of the input JPEG and of the output. `nr` reports
the share of photos whose output is better than its input, per measure and per category (a photo counts
in each of its categories), as DIR/nr_summary.md and DIR/nr_summary.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from realphoto_dev import (CATEGORIES, SHARED, UsageError, _fmt, append_row, deblur_cli, need_dir, out_dir,
                           read_rgb, read_rows)

REAL = SHARED / "test" / "Lai16_real"
MEASURES = {"si": "sharpness index (higher = sharper)", "niqe": "NIQE (lower = better)"}


def check_names(names, all_photos: dict) -> list[str] | None:
    unknown = [n for n in names or () if n not in all_photos]
    if unknown:
        raise UsageError(f"--names: not in attribute.txt: {', '.join(unknown)}")
    return names


def photos(real: Path) -> dict:
    """name -> (path of the blurry JPEG, its categories), in attribute.txt order."""
    need_dir(real / "blurry", "--real")
    if not (real / "attribute.txt").is_file():
        raise UsageError(f"--real: {str(real / 'attribute.txt')!r} not found")
    out = {}
    for line in (real / "attribute.txt").read_text().splitlines():
        if line.split():
            name, *cats = line.split()
            files = sorted((real / "blurry").glob(f"{name}.*"))
            if not files:
                raise UsageError(f"--real: no photo for {name!r} in {str(real / 'blurry')!r}")
            out[name] = (files[0], cats)
    return out


def sheet_selection(all_photos: dict, n: int = 12) -> list[str]:
    chosen = []
    while len(chosen) < min(n, len(all_photos)):
        for c in CATEGORIES:
            nxt = next((k for k, (_, cats) in all_photos.items() if c in cats and k not in chosen), None)
            if nxt and len(chosen) < n:
                chosen.append(nxt)
    return chosen


def outputs_of(outdir: Path, name: str) -> tuple[Path, Path]:
    return outdir / f"{name}_deblurred.png", outdir / f"{name}_kernel.npy"


def ensure_outputs(names: list[str], all_photos: dict, outdir: Path, threads: int) -> None:
    """Run `diffem deblur` (every default) on each photo whose outputs are not in outdir yet."""
    todo = [n for n in names if not all(p.exists() for p in outputs_of(outdir, n))]
    for n in tqdm(todo, desc="diffem deblur"):
        r = deblur_cli(all_photos[n][0], outdir, outdir / "logs" / f"{n}.log", threads)
        append_row(outdir / "runs.jsonl", dict(photo=n, method="diffem", threads=threads, **r))
        if r["rc"] != 0:
            print(f"diffem deblur failed on {n} (rc {r['rc']}; see {outdir / 'logs' / f'{n}.log'})", file=sys.stderr)


def nr_scores(names: list[str], all_photos: dict, outdir: Path) -> dict:
    """name -> {si_in, si_out, niqe_in, niqe_out}, cached in outdir/nr.jsonl; photos without output are left out."""
    import torch

    from diffem.metrics import niqe, sharpness_index

    cache = outdir / "nr.jsonl"
    rows = {k[0]: r for k, r in read_rows(cache).items()}
    for n in tqdm([n for n in names if n not in rows and outputs_of(outdir, n)[0].exists()], desc="no-reference"):
        row = dict(photo=n, method="diffem", categories=all_photos[n][1], written=written(outdir, n))
        for tag, path in (("in", all_photos[n][0]), ("out", outputs_of(outdir, n)[0])):
            x = torch.from_numpy(read_rgb(path)).permute(2, 0, 1)[None]
            row[f"si_{tag}"], row[f"niqe_{tag}"] = float(sharpness_index(x)[0]), float(niqe(x)[0])
        append_row(cache, row)
        rows[n] = row
    return {n: rows[n] for n in names if n in rows}


def written(outdir: Path, name: str) -> str:
    """What the CLI's report says it wrote (e.g. 'deblurred', or 'denoised' when the safeguard fired)."""
    report = outdir / f"{name}_report.json"
    return json.loads(report.read_text()).get("output", "deblurred") if report.exists() else "?"


def better(r: dict, m: str) -> bool:
    return r[f"{m}_out"] > r[f"{m}_in"] if m == "si" else r[f"{m}_out"] < r[f"{m}_in"]


def contact_sheet(args) -> int:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from diffem.files import atomic_write

    all_photos = photos(Path(args.real))
    outdir = out_dir(args.outputs, "--outputs")
    out = out_dir(args.out, "--out")
    names = (check_names(args.names, all_photos) or sheet_selection(all_photos))[:args.limit]
    ensure_outputs(names, all_photos, outdir, args.threads)
    scores = nr_scores(names, all_photos, outdir)
    missing = [n for n in names if n not in scores]
    names = [n for n in names if n in scores]
    if missing:
        print(f"left out of the sheet, no output: {', '.join(missing)} (see {outdir / 'logs'})", file=sys.stderr)
    if not names:
        raise UsageError(f"--outputs: no output of `diffem deblur` in {str(outdir)!r} (see its logs/)")
    imgs = [(read_rgb(all_photos[n][0]), read_rgb(outputs_of(outdir, n)[0]), np.load(outputs_of(outdir, n)[1]))
            for n in names]
    heights = [x.shape[0] / x.shape[1] for x, _, _ in imgs]
    panel = 4.6  # inches per photo panel
    fig = Figure(figsize=(2 * panel + 2.2, panel * sum(heights) + 0.45 * len(names) + 0.6), dpi=args.dpi)
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(len(names), 3, width_ratios=[panel, panel, 2.0], height_ratios=heights)
    for i, (n, (x, y, k)) in enumerate(zip(names, imgs)):
        s = scores[n]
        for j, (img, tag) in enumerate(((x, "in"), (y, "out"))):
            ax = fig.add_subplot(gs[i, j])
            ax.imshow(np.clip(img, 0, 1), interpolation="lanczos")
            head = f"{n} ({', '.join(all_photos[n][1])}): input" if tag == "in" else f"output ({written(outdir, n)})"
            ax.set_title(f"{head}   SI {s[f'si_{tag}']:.1f}, NIQE {s[f'niqe_{tag}']:.2f}", fontsize=8, loc="left")
            ax.axis("off")
        ax = fig.add_subplot(gs[i, 2])
        ax.imshow(k / max(k.max(), 1e-12), cmap="magma", interpolation="nearest")
        ax.set_title(f"kernel {k.shape[0]}×{k.shape[1]}", fontsize=8)
        ax.axis("off")
    fig.suptitle("Lai16 real photos: `diffem deblur` with every default (SI: higher = sharper; NIQE: lower = better)",
                 fontsize=10, y=1 - 0.1 / fig.get_figheight(), va="top")   # inside the band kept free below
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    print(f"contact sheet of {len(names)} photos: {out}")
    return 0


def nr_report(args) -> int:
    from diffem.files import write_text

    all_photos = photos(Path(args.real))
    outdir = out_dir(args.outputs, "--outputs")
    names = (check_names(args.names, all_photos) or list(all_photos))[:args.limit]
    ensure_outputs(names, all_photos, outdir, args.threads)
    scores = nr_scores(names, all_photos, outdir)
    groups = {"all": list(scores.values())}
    groups.update({c: [r for r in scores.values() if c in r["categories"]] for c in CATEGORIES})
    summary = {g: dict(photos=len(rs), **{f"{m}_better": sum(better(r, m) for r in rs) for m in MEASURES},
                       both_better=sum(all(better(r, m) for m in MEASURES) for r in rs),
                       **{f"{m}_{t}_mean": float(np.mean([r[f'{m}_{t}'] for r in rs])) if rs else None
                          for m in MEASURES for t in ("in", "out")})
               for g, rs in groups.items()}
    pct = lambda k, v: f"{v[k]}/{v['photos']} ({100 * v[k] / v['photos']:.0f} %)" if v["photos"] else "–"  # noqa: E731
    lines = [f"`diffem deblur` (every default) on {len(scores)} of the {len(all_photos)} Lai16 real photos "
             f"({len(names) - len(scores)} without output): share of photos whose output is better than its input.",
             "", "| photos | n | SI better | NIQE better | both better | mean SI in → out | mean NIQE in → out |",
             "|---|---|---|---|---|---|---|"]
    for g, v in summary.items():
        mean = lambda m: " → ".join(_fmt(np.nan if v[f"{m}_{t}_mean"] is None else v[f"{m}_{t}_mean"], ".2f")  # noqa: E731
                                    for t in ("in", "out"))
        lines.append(f"| {g} | {v['photos']} | {pct('si_better', v)} | {pct('niqe_better', v)} | "
                     f"{pct('both_better', v)} | {mean('si')} | {mean('niqe')} |")
    kinds = sorted({r.get("written", "?") for r in scores.values()})
    lines += ["", "What the CLI wrote (its report's `output`): " + ", ".join(
        f"{k} {sum(r.get('written', '?') == k for r in scores.values())}" for k in kinds) +
        " (an output that is only denoised can still score better than its input)."]
    runs = list(read_rows(outdir / "runs.jsonl").values())
    if runs:
        lines += ["", f"Runs recorded in runs.jsonl: {len(runs)}, mean wall {np.mean([r['wall_s'] for r in runs]):.0f} s, "
                  f"max peak RSS {max(r['peak_rss_mb'] for r in runs):.0f} MB, failed {sum(r['rc'] != 0 for r in runs)}."]
    write_text(outdir / "nr_summary.md", "\n".join(lines) + "\n")
    write_text(outdir / "nr_summary.json", json.dumps(dict(summary=summary, photos=scores), indent=1) + "\n")
    print("\n".join(lines))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    nr = argv[:1] == ["nr"]
    ap = argparse.ArgumentParser(prog="contact_sheet.py" + (" nr" if nr else ""), description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if not nr:
        ap.add_argument("--out", required=True, help="the contact sheet (PNG), e.g. docs/figures/lai16_real_contact_sheet.png")
        ap.add_argument("--dpi", type=int, default=100, help="resolution: each photo panel is 4.6 inches wide")
    ap.add_argument("--outputs", default="runs/lai16_real", help="folder of `diffem deblur` outputs (reused, or written)")
    ap.add_argument("--real", default=str(REAL), help="Lai16_real folder (blurry/, attribute.txt)")
    ap.add_argument("--limit", type=int, default=None, help="only the first N photos (of the 12, or of the 100 for nr)")
    ap.add_argument("--names", nargs="+", default=None, help="these photos instead (names in attribute.txt)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each `diffem deblur` run")
    args = ap.parse_args(argv[1:] if nr else argv)
    import torch

    torch.set_num_threads(args.threads)
    try:
        return nr_report(args) if nr else contact_sheet(args)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"contact_sheet.py{' nr' if nr else ''}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
