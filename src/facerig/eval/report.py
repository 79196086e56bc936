"""Writing an evaluation: ``summary.json``, ``items.csv``, ``report.md`` and ``report.html`` (same content),
plots and an image grid as PNGs beside them.

JSON has no inf or NaN: ``summary.json`` writes +inf (the PSNR of identical images) as the string ``"inf"``
and NaN (not computed) as ``null``; ``items.csv`` writes ``inf`` and an empty cell.
"""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from facerig.eval.edit_accuracy import METRICS as EDIT_METRICS
from facerig.eval.evaluate import EvalResult, summarize
from facerig.eval.items import read_rgb
from facerig.io import atomic_write_bytes, atomic_write_json, contact_sheet

CELL = 128  # grid thumbnail size in pixels

EDIT_LABELS = {
    "light_rmse": "SH light (RMSE)",
    "expression_rmse": "expression (RMSE)",
    "pose_rmse_deg": "pose yaw/pitch/roll (RMSE, deg)",
    "pose_geodesic_deg": "pose geodesic angle (deg)",
}
RECON_LABELS = {"psnr": ("PSNR (dB)", "whole image"), "ssim": ("SSIM", "whole image"), "psnr_face": ("PSNR (dB)", "face"), "ssim_face": ("SSIM", "face")}


def json_safe(obj: object) -> object:
    """Nested dicts/lists with +-inf -> "inf"/"-inf" and NaN -> None, so ``json`` writes standard JSON."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        if math.isnan(v):
            return None
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else v
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def fmt_num(v: float | str | None, digits: int = 4) -> str:
    """A number for a table: NaN/None -> "n/a", floats to ``digits`` significant digits, strings unchanged."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _csv_cell(v: float) -> str:
    return "" if math.isnan(v) else ("inf" if v == math.inf else f"{v:.6g}")


def _notes(reasons: dict[str, str]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in reasons.items())


def _items_csv(result: EvalResult) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    extra = ["mask_source"] if result.reconstructions else []
    w.writerow(["item", "status", *result.columns, *extra, "notes"])
    for r in result.items:
        w.writerow([r.name, r.status, *(_csv_cell(r.metrics[c]) for c in result.columns), *([r.mask_source] if extra else []), _notes(r.reasons)])
    return buf.getvalue().encode()


def _save_figure(fig: Figure, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _finite(result: EvalResult, column: str) -> np.ndarray:
    v = np.array([r.metrics[column] for r in result.items if r.status == "ok"], np.float64)
    return v[np.isfinite(v)]


def _plot_identity(result: EvalResult, path: Path) -> bool:
    series = [(label, _finite(result, c)) for label, c in (("edited - source", "id_edited_source"), ("edited - album (mean)", "id_edited_album"), ("source - album (mean)", "id_source_album"))]
    series = [(label, v) for label, v in series if v.size]
    if not series:
        return False
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    hi = max(1.0, max(v.max() for _, v in series) * 1.05)
    for label, v in series:
        ax.hist(v, bins=np.linspace(0, hi, 31), alpha=0.55, label=f"{label} (n={v.size})")
    ax.axvline(result.threshold, color="k", ls="--", lw=1, label=f"same-person threshold {result.threshold:g}")
    ax.set_xlabel("dlib embedding distance (lower = same identity)")
    ax.set_ylabel("items")
    ax.legend(fontsize=8)
    _save_figure(fig, path)
    return True


def _plot_edit(edit: dict, path: Path) -> bool:
    metrics = edit.get("metrics", {})
    if not metrics:
        return False
    fig = Figure(figsize=(3 * len(metrics), 3.2))
    for i, (m, v) in enumerate(metrics.items()):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        ax.bar(["source", "edited"], [v["source_mean"], v["edited_mean"]], color=["#999999", "#3a76c4"])
        ax.set_title(EDIT_LABELS[m], fontsize=9)
        ax.set_ylabel("mean error to target")
    fig.tight_layout()
    _save_figure(fig, path)
    return True


def _plot_reconstruction(result: EvalResult, path: Path) -> bool:
    fig = Figure(figsize=(8, 3.2))
    drawn = False
    for i, (metric, unit) in enumerate((("psnr", "PSNR (dB), finite only"), ("ssim", "SSIM"))):
        ax = fig.add_subplot(1, 2, i + 1)
        for col, region in ((metric, "whole image"), (f"{metric}_face", "face")):
            v = _finite(result, col)
            if v.size:
                ax.hist(v, bins=20, alpha=0.55, label=f"{region} (n={v.size})")
                drawn = True
        ax.set_xlabel(unit)
        ax.set_ylabel("items")
        ax.legend(fontsize=8)
    if drawn:
        fig.tight_layout()
        _save_figure(fig, path)
    return drawn


def _thumb(image: np.ndarray) -> np.ndarray:
    return np.asarray(ImageOps.pad(Image.fromarray(image), (CELL, CELL), color=(255, 255, 255)))


def _grid(result: EvalResult, path: Path, n: int) -> list[str]:
    """Rows of source | edited (| |error| x4 for reconstructions) for the first ``n`` evaluated items."""
    rows, names = [], []
    for r in [r for r in result.items if r.status == "ok"][:n]:
        source, edited = read_rgb(r.folder / "source.png"), read_rgb(r.folder / "edited.png")
        row = [_thumb(source), _thumb(edited)]
        if result.reconstructions:
            err = np.abs(source.astype(np.int16) - edited.astype(np.int16)) * 4
            row.append(_thumb(np.clip(err, 0, 255).astype(np.uint8)))
        rows.append(row)
        names.append(r.name)
    if rows:
        atomic_write_bytes(path, _png_bytes(contact_sheet(rows)))
    return names


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# A report is a list of blocks rendered twice, to Markdown and to HTML:
# ("h", level, text) | ("p", text) | ("ul", [text]) | ("table", header, rows) | ("img", file, alt)
Block = tuple


def _blocks(result: EvalResult, summary: dict, images: dict[str, str], grid_names: list[str]) -> list[Block]:
    b: list[Block] = [("h", 1, f"facerig eval: {result.edits.name}")]
    b.append(("p", f"Edits folder `{result.edits}`, mode **{summary['mode']}**: {summary['n_items']} items, "
                   f"{summary['n_evaluated']} evaluated, {len(summary['skipped'])} skipped."))
    if summary["skipped"]:
        b += [("h", 2, "Skipped items"), ("table", ["item", "reason"], [[s["item"], s["reason"]] for s in summary["skipped"]])]

    ident = summary["identity"]
    b += [("h", 2, "Identity"), ("p", f"dlib 128-D face embedding, Euclidean distance; the same person lies below "
                                      f"{ident['threshold']:g} by dlib's convention. Lower is better.")]
    rows = [["edited - source", *_stat_cells(ident["edited_vs_source"]), fmt_num(ident["edited_vs_source"]["same_person_rate"])]]
    if "album" in ident:
        rows.append(["edited - album (mean over album)", *_stat_cells(ident["id_edited_album"]), fmt_num(ident["album_match_edited"]["mean"])])
        rows.append(["source - album (mean over album)", *_stat_cells(ident["id_source_album"]), fmt_num(ident["album_match_source"]["mean"])])
    b.append(("table", ["comparison", "n", "mean", "median", "min", "max", "same-person rate"], rows))
    if "album" in ident:
        alb = ident["album"]
        b.append(("p", f"Album `{alb['folder']}`: {alb['n_faces']} photos with a face, {len(alb['failures'])} without. "
                       "For album rows the same-person rate is the mean fraction of album photos within the threshold."))
    if ident["no_face"]:
        b.append(("ul", [f"{x['item']}: {x['reason']}" for x in ident["no_face"]]))
    if "identity" in images:
        b.append(("img", images["identity"], "identity distance histogram"))

    if "edit_accuracy" in summary:
        edit = summary["edit_accuracy"]
        b += [("h", 2, "Edit accuracy"), ("p", "DiffusionRig Table 1 protocol with facerig's capture in DECA's place: the edited photo is "
              "re-captured and its SH lighting, expression and pose are compared with the requested target; the unedited "
              "source's distance to the same target is the baseline. Gap closed = 1 - edited/source (1: target reached; "
              "n/a where the source already sat on the target, i.e. that parameter was not edited and its edited error is leakage). "
              "Light and expression RMSE are in parameter units; pose in degrees, as RMSE over yaw/pitch/roll "
              "(facerig.face3d.rotation's R = Ry(yaw) Rx(pitch) Rz(roll)) and as the geodesic angle of the relative rotation.")]
        if edit["metrics"]:
            b.append(("table", ["parameter", "n", "unedited source", "edited", "gap closed"],
                      [[EDIT_LABELS[m], str(v["n"]), fmt_num(v["source_mean"]), fmt_num(v["edited_mean"]), fmt_num(v["gap_closed"], 3)] for m, v in edit["metrics"].items()]))
        if edit["reason"]:
            b.append(("p", f"Not computed: {edit['reason']}."))
        if "edit" in images:
            b.append(("img", images["edit"], "edit accuracy: source vs edited error"))

    if "reconstruction" in summary:
        rec = summary["reconstruction"]
        b.append(("h", 2, "Reconstruction"))
        b.append(("table", ["metric", "region", "n", "mean", "median", "min", "max", "identical (PSNR inf)"],
                  [[*RECON_LABELS[m], *_stat_cells(rec[m]), str(rec[m]["n_inf"])] for m in RECON_LABELS]))
        src = rec["mask_sources"]
        b.append(("p", f"Face region: mask.png for {src['mask.png']} items, the jaw-and-brow outline of the source's 68 dlib "
                       f"landmarks for {src['landmarks']}, none for {src['']}. SSIM: Gaussian 11x11 window, sigma 1.5, valid region; "
                       "n counts every computed value, identical images (PSNR inf) among them; mean, median, min and max are over the finite ones."))
        if "reconstruction" in images:
            b.append(("img", images["reconstruction"], "PSNR and SSIM histograms"))

    fr = summary["frechet"]
    b += [("h", 2, "Distribution (Frechet distance)"), ("p", f"Features: {fr['features']}. With fewer photos than 128 the "
          "covariances are singular and the distance is biased upwards; compare the edited set with the source set, "
          "not with published numbers.")]
    if fr["edited_vs_real"] is not None:
        b.append(("table", ["set", "n", "Frechet distance to real"],
                  [["edited", str(fr["n_edited"]), fmt_num(fr["edited_vs_real"])], ["source (baseline)", str(fr["n_sources"]), fmt_num(fr["source_vs_real"])]]))
        b.append(("p", f"Real photos: {fr['n_real']} with a face."))
    else:
        b.append(("p", f"Not computed: {fr['reason']}."))

    if grid_names:
        cols = "source | edited" + (" | |error| x4" if result.reconstructions else "")
        b += [("h", 2, "Samples"), ("p", f"Columns: {cols}. Rows, top to bottom: {', '.join(grid_names)}."), ("img", images["grid"], "sample grid")]

    shown = ("id_edited_source", "id_edited_album") + (("psnr", "ssim", "psnr_face", "ssim_face") if result.reconstructions else tuple(f"{m}_edited" for m in EDIT_METRICS))
    b += [("h", 2, "Per-item results"), ("p", "All columns are in items.csv."),
          ("table", ["item", "status", *shown, "notes"], [[r.name, r.status, *(fmt_num(r.metrics[c]) for c in shown), _notes(r.reasons)] for r in result.items])]
    b += [("h", 2, "Conventions"), ("ul", [
        'summary.json writes an infinite PSNR (identical images) as the string "inf" and a value that could not be computed as null; items.csv writes inf and an empty cell.',
        "Means, medians and rates are over items where the value is finite.",
        "Identity uses the largest detected face of each photo.",
    ])]
    return b


def _stat_cells(s: dict) -> list[str]:
    return [str(s["n"]), fmt_num(s["mean"]), fmt_num(s["median"]), fmt_num(s["min"]), fmt_num(s["max"])]


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def _markdown(blocks: list[Block]) -> str:
    out = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif kind == "p":
            out.append(blk[1])
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in blk[1]))
        elif kind == "table":
            lines = [_md_row(blk[1]), "|" + "---|" * len(blk[1])] + [_md_row(row) for row in blk[2]]
            out.append("\n".join(lines))
        elif kind == "img":
            out.append(f"![{blk[2]}]({blk[1]})")
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    """Escape, then turn Markdown's `code` and **bold** (the only inline marks the blocks use) into tags."""
    parts = html.escape(text).split("`")
    text = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def _html(blocks: list[Block], title: str) -> str:
    body = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h":
            body.append(f"<h{blk[1]}>{_inline_html(blk[2])}</h{blk[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(blk[1])}</p>")
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{_inline_html(x)}</li>" for x in blk[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in blk[1])
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in blk[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            body.append(f'<p><img src="{html.escape(blk[1])}" alt="{html.escape(blk[2])}"></p>')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "th{background:#f3f3f3}img{max-width:100%}code{background:#f3f3f3}")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(result: EvalResult, out: str | Path, grid_items: int = 16) -> dict:
    """Write every report file into ``out``; returns the summary (as written to summary.json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = summarize(result)
    images: dict[str, str] = {}
    if _plot_identity(result, out / "identity.png"):
        images["identity"] = "identity.png"
    if "edit_accuracy" in raw and _plot_edit(raw["edit_accuracy"], out / "edit_accuracy.png"):
        images["edit"] = "edit_accuracy.png"
    if result.reconstructions and _plot_reconstruction(result, out / "reconstruction.png"):
        images["reconstruction"] = "reconstruction.png"
    grid_names = _grid(result, out / "grid.png", grid_items)
    if grid_names:
        images["grid"] = "grid.png"
    raw["files"] = ["summary.json", "items.csv", "report.md", "report.html", *images.values()]
    summary = json_safe(raw)
    # The tables read the raw numbers, so infinities print as "inf" and NaNs as "n/a".
    blocks = _blocks(result, raw, images, grid_names)
    atomic_write_json(out / "summary.json", summary)
    atomic_write_bytes(out / "items.csv", _items_csv(result))
    atomic_write_bytes(out / "report.md", _markdown(blocks).encode())
    atomic_write_bytes(out / "report.html", _html(blocks, f"facerig eval: {result.edits.name}").encode())
    return summary
