"""`launch.py report RUN_OR_SEARCH`: one self-contained HTML page per training run, search or folds run.

Everything is embedded (PNG images as data URIs, the CSS and the few lines of JavaScript that sort the trials
table), so the file opens from a USB stick with no server and no network. Charts are matplotlib PNGs, the library
the run folders already use: the page needs no chart library, and sorting a table is the only interaction it has.

A training run's page puts the val mIoU, the curve and a prediction overlay on the first screen, then per-class IoU,
the confusion heatmap, the worst and best validation images (the best checkpoint predicts up to
`SCORED_IMAGES` val images here, each scored alone), the previews, the recipe (and the plan with its reasons),
timings and the command that reproduces it. A search's page has the trials table, each searched value against the
metric, the trials' curves over time with the scheduler's stops and PBT's exploits, and a link to the best trial's
page. A folds run's page has the per-fold table and the out-of-fold summary.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import segdata
from segengine import checkpoint, storage
from segengine.inference.ensemble import open_predictor
from segengine.inference.evaluation import iou_chart_png
from segengine.inference.prediction import render
from segengine.metrics import image_miou

REPORT_FILE = "report.html"
SCORED_IMAGES = 24  # val images the report's worst / best gallery scores (evenly spaced over the split)
SHOWN = 3  # worst and best images shown
THUMB = 360  # pixels of a gallery image's longer side


def _b64(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _png(array: np.ndarray, longest: int = THUMB) -> bytes:
    from PIL import Image

    picture = Image.fromarray(array)
    scale = longest / max(picture.size)  # small images grow (pixels kept sharp), large ones shrink
    if scale != 1:
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)),
                                 Image.BILINEAR if scale < 1 else Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _img(data: bytes | None, alt: str, css: str = "") -> str:
    if not data:
        return f'<p class="muted">({html.escape(alt)}: not in this folder)</p>'
    return f'<img src="{_b64(data)}" alt="{html.escape(alt)}" class="{css}">'


def _figure_png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read(folder: str, name: str) -> bytes | None:
    path = storage.join(folder, name)
    return storage.read_bytes(path) if storage.exists(path) else None


def _json(folder: str, name: str) -> Any:
    data = _read(folder, name)
    return json.loads(data) if data else None


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}f}" if isinstance(value, float) else str(value)
    return html.escape(str(value)) if value not in (None, "") else ""


def _table(headers: list[str], rows: list[list[Any]], sortable: bool = False) -> str:
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_num(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<div class=scroll><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:12px 16px 40px}
h1{font-size:22px;margin:6px 0 2px} h2{font-size:18px;margin:26px 0 8px;border-bottom:1px solid #ddd}
.muted{color:#666}.kpi{font-size:30px;font-weight:650;margin:2px 0}.kpi small{font-size:15px;font-weight:400}
.first{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:14px;align-items:start}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:12px}
img{max-width:100%;height:auto;display:block;border:1px solid #ddd;background:#fff}
figure{margin:0} figcaption{font-size:13px;color:#444}
.scroll{overflow-x:auto} table{border-collapse:collapse;font-size:13px;min-width:50%}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 8px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left} th{background:#f0f0f0}
table.sortable th{cursor:pointer} table.sortable th:after{content:" \\2195";color:#999}
pre{background:#f3f3f3;padding:8px;overflow-x:auto;font-size:12px;max-height:420px}
@media (max-width:760px){.first{grid-template-columns:1fr}.kpi{font-size:24px}}
"""

SORT_JS = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var up = th.dataset.order !== 'asc'; th.dataset.order = up ? 'asc' : 'desc';
      rows.sort(function(a, b){
        var x = a.cells[col].textContent, y = b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return up ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
    });
  });
});
"""


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
            f'content="width=device-width,initial-scale=1"><title>{html.escape(title)}</title><style>{CSS}</style>'
            f"</head><body><main>{body}<p class=muted>written by unet-zoo on {time.strftime('%Y-%m-%d %H:%M')}"
            f"</p></main><script>{SORT_JS}</script></body></html>")


# --- a training run ------------------------------------------------------------------------------------------------

def _history(folder: str) -> list[dict[str, str]]:
    data = _read(folder, "history.csv")
    return list(csv.DictReader(io.StringIO(data.decode()))) if data else []


def _gallery(best: str, config: dict[str, Any]) -> tuple[list[tuple[str, float, bytes, bytes]], str]:
    """(name, mIoU, prediction overlay PNG, ground-truth overlay PNG) of up to SCORED_IMAGES val images, worst
    first; and a line saying what was scored."""
    predictor = open_predictor(best, config.get("plugins") or [], verbose=False)
    folder = segdata.open_dataset(segdata.resolve_data(config.get("data") or "synth"),
                                  val_fraction=float(config.get("val_fraction", 0.2)),
                                  image_range=predictor.manifest.dataset.image_range)
    fold = predictor.manifest.fold  # a fold model validated on its held-out images of the training split
    split = fold.split if fold else config.get("val_split", "val")
    held_out = set(fold.folds[fold.index]) if fold else None
    samples = [s for s in folder.samples(split) if s.label is not None and (held_out is None or s.name in held_out)]
    picks = sorted({int(i) for i in np.linspace(0, len(samples) - 1, min(len(samples), SCORED_IMAGES))})
    scored = []
    for i in picks if samples else ():
        image = predictor.read(samples[i].image)
        label = segdata.read_label(samples[i].label, folder.meta)
        mask = predictor.predict_mask(image)
        truth = np.where(label < predictor.num_classes, label, 0).astype(np.uint8)
        scored.append((samples[i].name, image_miou(label, mask, predictor.num_classes),
                       _png(render(image, mask, predictor.palette)["overlay"]),
                       _png(render(image, truth, predictor.palette)["overlay"])))
    scored.sort(key=lambda item: item[1] if math.isfinite(item[1]) else 2.0)
    where = f"fold {fold.index}'s held-out '{split}'" if fold else f"'{split}'"
    return scored, f"{len(scored)} of the {len(samples)} {where} images, each scored alone"


def _figures(items: list[tuple[str, float, bytes, bytes]]) -> str:
    cells = []
    for name, miou, predicted, truth in items:
        cells.append(f"<figure>{_img(predicted, f'{name} prediction')}<figcaption>{html.escape(name)}: prediction, "
                     f"mIoU {_num(miou, 3)}</figcaption></figure><figure>{_img(truth, f'{name} ground truth')}"
                     f"<figcaption>{html.escape(name)}: ground truth</figcaption></figure>")
    return f"<div class=grid>{''.join(cells)}</div>"


def _confusion_png(validation: dict[str, Any]) -> bytes:
    """Row-normalised confusion matrix (true class x predicted class) as a heatmap."""
    plt = _pyplot()
    cm = np.asarray(validation["confusion"], np.float64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    names = validation["classes"]
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    shown = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 4 else 0, ha="right" if len(names) > 4
                  else "center", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(names) <= 12:
        for (r, c), v in np.ndenumerate(share):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.6 else "black")
    fig.colorbar(shown, ax=ax, fraction=0.046, label="share of the true class's pixels")
    ax.set_title(f"validation at epoch {validation['epoch']} (rows sum to 1)", fontsize=10)
    return _figure_png(fig)


def _timings_rows(timings: dict[str, Any] | None) -> list[list[Any]]:
    if not timings:
        return []
    epochs = timings.get("epochs") or []
    rows = [["start-up (worker ready)", f"{timings['ready'] - timings['train_func']:.1f} s"]]
    if epochs:
        total = sum(e["epoch_s"] for e in epochs)
        validated = [e for e in epochs if e["val_s"] > 0]
        rows += [["epochs", len(epochs)], ["training and validation", f"{total / 60:.1f} min"],
                 ["mean epoch", f"{total / len(epochs):.1f} s"],
                 ["mean validation", f"{np.mean([e['val_s'] for e in validated]):.2f} s" if validated else "-"],
                 ["previews", f"{sum(e.get('preview_s', 0) for e in epochs) / total:.2%} of the time"]]
    if timings.get("budget"):
        rows.append(["budget", f"{timings['budget']['spent_s'] / 60:.1f} of {timings['budget']['budget_s'] / 60:.1f} "
                               "min"])
    return rows


def run_page(folder: str, best: str | None = None) -> str:
    """A training run's page (`best`: its best checkpoint where the folder does not say, e.g. a search trial's)."""
    config = yaml.safe_load(_read(folder, "config.yaml") or b"") or {}
    best = best or checkpoint.best_path(folder, config.get("metric", "val_miou"), config.get("mode", "max"))
    manifest = checkpoint.read_manifest(best) if best else None
    config = config or (manifest.config if manifest else {})  # a search trial's folder: its checkpoint's config
    history = _history(folder)
    metrics = manifest.metrics if manifest else {}
    metric = config.get("metric", "val_miou")
    scored, scored_note = _gallery(best, config) if best else ([], "no checkpoint yet")
    overlay = _figures(scored[-1:]) if scored else '<p class="muted">no labelled validation image</p>'
    name = config.get("name") or Path(folder).name
    if manifest is not None and manifest.fold is not None:
        name = f"{name}, fold {manifest.fold.index}"
    head = (f"<h1>{html.escape(name)}</h1><p class=muted>{html.escape(str(config.get('encoder')))} on "
            f"{html.escape(str(config.get('data') or 'synth'))}; {len(history)} epoch(s)</p>"
            f"<p class=kpi id=kpi>{html.escape(metric)} {_num(metrics.get(metric))} <small>best checkpoint, epoch "
            f"{metrics.get('epoch', '-')} of {config.get('epochs', '-')}</small></p>")
    first = (f"<div class=first><figure>{_img(_read(folder, 'miou.png'), 'validation mIoU curve')}"
             f"<figcaption>validation mIoU (validated epochs)</figcaption></figure><div>{overlay}</div></div>")
    classes = [k.removeprefix("val_iou_") for k in metrics if k.startswith("val_iou_")]
    iou = {"class_names": classes, "iou": {c: metrics[f"val_iou_{c}"] for c in classes},
           "miou": metrics.get("val_miou", float("nan")), "split": "val (training's validation)",
           "images": len(scored)}
    validation = _json(folder, "validation_best.json")
    sections = [
        head, first,
        "<h2>Per-class IoU</h2>", _table(["class", "IoU", "Dice"], [[c, metrics.get(f"val_iou_{c}"),
                                                                     metrics.get(f"val_dice_{c}")] for c in classes]),
        _img(iou_chart_png(iou) if classes else None, "per-class IoU chart"),
        "<h2>Confusion</h2>", _img(_confusion_png(validation) if validation else None, "confusion heatmap"),
        f"<h2>Worst and best validation images</h2><p class=muted>{html.escape(scored_note)}</p>",
        "<h3>worst</h3>", _figures(scored[:SHOWN]), "<h3>best</h3>", _figures(scored[-SHOWN:][::-1]),
        "<h2>Previews at the best validation</h2>", _img(_read(folder, "previews/best.png"), "previews"),
        "<h2>Loss</h2>", _img(_read(folder, "loss.png"), "loss curves"),
        "<h2>Timings</h2>", _table(["", ""], _timings_rows(_json(folder, "timings.json"))),
    ]
    plan = _read(folder, "plan.yaml")
    if plan:
        sections += ["<h2>Plan (a reason above every planned key)</h2>", f"<pre>{html.escape(plan.decode())}</pre>"]
    recipe = yaml.safe_dump(config, sort_keys=False)
    sections += ["<h2>Recipe</h2>", f"<details><summary>config.yaml</summary><pre>{html.escape(recipe)}</pre>"
                 "</details>",
                 "<h2>Reproduce</h2>", f"<pre>{html.escape(_reproduce(folder))}</pre>"]
    return _page(f"{name}: report", "\n".join(sections))


def _reproduce(folder: str) -> str:
    if storage.exists(storage.join(folder, "config.yaml")):
        return f"python launch.py train --config {storage.join(folder, 'config.yaml')} --name NEW_NAME"
    return f"python launch.py train --config {storage.join(str(Path(folder).parent), 'best.yaml')} --name NEW_NAME"


# --- a search -------------------------------------------------------------------------------------------------------

def _trial_results(folder: str, trial: str) -> list[dict[str, Any]]:
    """Tune's results of one trial (its result.json, a JSON object per reported epoch)."""
    data = _read(folder, f"{trial}/result.json")
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()] if data else []


def _scatter_png(rows: list[dict[str, str]], column: str, metric: str) -> bytes:
    plt = _pyplot()
    points = [(float(r[column]), float(r[f"best_{metric}"])) for r in rows
              if r.get(column) not in (None, "") and r.get(f"best_{metric}") not in (None, "", "nan")]
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, color="#4C72B0")
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
    ax.set_xlabel(column)
    ax.set_ylabel(f"best {metric}")
    ax.grid(alpha=0.3)
    return _figure_png(fig)


def _decisions_png(folder: str, rows: list[dict[str, str]], metric: str) -> bytes:
    """Each trial's metric against its run time; where the scheduler stopped it, an x."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for row in rows:
        results = [r for r in _trial_results(folder, row["trial"]) if isinstance(r.get(metric), (int, float))]
        if not results:
            continue
        times = [r.get("time_total_s", 0) / 60 for r in results]
        values = [r[metric] for r in results]
        line, = ax.plot(times, values, marker=".", linewidth=1, label=row["trial"])
        if row.get("status") == "stopped":
            ax.plot(times[-1], values[-1], marker="x", markersize=10, color=line.get_color())
    ax.set_xlabel("minutes of the trial")
    ax.set_ylabel(metric)
    ax.set_title("trials over time (x: stopped by the scheduler)", fontsize=10)
    ax.grid(alpha=0.3)
    if len(rows) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return _figure_png(fig)


def search_page(folder: str, best_report: str | None) -> str:
    text = (_read(folder, "results.csv") or b"").decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    best = _json(folder, "best.json") or {}
    search = yaml.safe_load(_read(folder, "search.yaml") or b"") or {}
    metric = next((k.removeprefix("best_") for k in (rows[0] if rows else {}) if k.startswith("best_")), "val_miou")
    columns = list(rows[0]) if rows else []
    searched = columns[1:columns.index(f"best_{metric}")] if f"best_{metric}" in columns else []
    name = Path(folder).name
    link = (f'<p><a href="{html.escape(best_report)}">the best trial\'s report</a></p>' if best_report else "")
    exploits = (_read(folder, "pbt_global.txt") or b"").decode().splitlines()
    sections = [
        f"<h1>{html.escape(name)}</h1><p class=muted>{len(rows)} trial(s); scheduler "
        f"{html.escape(str((search.get('scheduler') or {}).get('type', '-')))}, searcher "
        f"{html.escape(str((search.get('searcher') or {}).get('type', '-')))}</p>",
        f"<p class=kpi id=kpi>{html.escape(metric)} {_num(best.get(metric))} <small>best trial "
        f"{html.escape(str(best.get('trial', '-')))}</small></p>", link,
        "<h2>Trials</h2><p class=muted>click a column to sort</p>",
        _table(columns, [[r.get(c) for c in columns] for r in rows], sortable=True),
        "<h2>Searched values against the metric</h2>",
        "<div class=grid>" + "".join(f"<figure>{_img(_scatter_png(rows, c, metric), c)}</figure>" for c in searched)
        + "</div>",
        "<h2>Scheduler decisions over time</h2>", _img(_decisions_png(folder, rows, metric), "trials over time"),
    ]
    if exploits:
        sections += [f"<h2>PBT exploits ({len(exploits)})</h2>", f"<pre>{html.escape(chr(10).join(exploits))}</pre>"]
    sections += ["<h2>Curves</h2>", _img(_read(folder, "trials.png"), "trial curves")]
    return _page(f"{name}: search report", "\n".join(sections))


# --- a folds run ----------------------------------------------------------------------------------------------------

def folds_page(folder: str) -> str:
    cv = _json(folder, "cv.json")
    name = Path(folder).name
    val = cv["val"]
    names = list(cv["fold_iou"])
    per_class = [[n, cv["fold_iou"][n]["mean"], cv["fold_iou"][n]["std"], cv["oof"]["iou"][n],
                  val["iou"][n] if val else None] for n in names]
    folds = [[f["fold"], f["images"], f["epoch"], f.get(cv["metric"]), f["miou"]] for f in cv["folds"]]
    rule = cv["decision"]
    sections = [
        f"<h1>{html.escape(name)}</h1><p class=muted>{cv['k']}-fold cross-validation of the "
        f"'{html.escape(cv['split'])}' split</p>",
        f"<p class=kpi id=kpi>out-of-fold mIoU {_num(cv['oof']['miou'])} <small>val mIoU by the ensemble "
        f"{_num(val['miou']) if val else 'n/a'}; folds {_num(cv['fold_miou']['mean'])} +- "
        f"{_num(cv['fold_miou']['std'])}</small></p>",
        "<h2>Per class</h2>", _table(["class", "folds mean", "folds sd", "out-of-fold", "val (ensemble)"], per_class),
        "<h2>Per fold</h2>", _table(["fold", "held-out images", "best epoch", cv["metric"], "mIoU (evaluate)"], folds,
                                    sortable=True),
        "<h2>Decision rule</h2>", "<p>" + html.escape(f"class 1 where p > {rule['threshold']:.2f} ({rule['chosen_on']})"
                                                      if rule.get("threshold") is not None
                                                      else f"argmax {rule.get('chosen_on', '')}") + "</p>",
        "<h2>Out-of-fold per-class IoU</h2>", _img(_read(folder, "oof/per_class_iou.png"), "out-of-fold IoU"),
        "<h2>Val split by the ensemble</h2>", _img(_read(folder, "eval-val/per_class_iou.png"), "val IoU"),
    ]
    return _page(f"{name}: cross-validation report", "\n".join(sections))


def write_report(folder: str, out: str | None = None, verbose: bool = True) -> str:
    """The report of a training run, search or folds run folder; returns where it was written (default
    FOLDER/report.html; a search also writes its best trial's page into that trial's folder)."""
    folder = storage.resolve(folder)
    if storage.exists(storage.join(folder, "cv.json")):
        page = folds_page(folder)
    elif storage.exists(storage.join(folder, "results.csv")):
        best = _json(folder, "best.json") or {}
        trial = storage.join(folder, best["trial"]) if best.get("trial") else None
        best_report = None
        if trial and storage.exists(trial) and best.get("checkpoint"):
            folder_of_run = trial if storage.exists(storage.join(trial, "history.csv")) else \
                storage.join(folder, "trials", best["trial"])
            storage.write_bytes(storage.join(folder_of_run, REPORT_FILE),
                                run_page(folder_of_run, best["checkpoint"]).encode())
            best_report = str(Path(folder_of_run).relative_to(folder) / REPORT_FILE) \
                if not storage.is_uri(folder) else storage.join(folder_of_run, REPORT_FILE)
        page = search_page(folder, best_report)
    elif storage.exists(storage.join(folder, "history.csv")):
        page = run_page(folder)
    else:
        raise checkpoint.CheckpointError(f"{folder}: not a run, search or folds run folder (no history.csv, "
                                         "results.csv or cv.json)")
    target = out or storage.join(folder, REPORT_FILE)
    storage.write_bytes(target, page.encode())
    if verbose:
        print(f"report           {target}  ({len(page) / 2**20:.1f} MiB, opens offline in any browser)",
              file=sys.stderr if out == "-" else sys.stdout)
    return target
