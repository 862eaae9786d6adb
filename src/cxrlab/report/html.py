"""`cxrlab report RUN`: one self-contained HTML file (every image inlined as data), readable offline."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from ..data.images import read_image
from ..errors import CxrlabError
from ..config import to_dict
from ..runs import MODEL_CARD, RunDir
from ..saliency import MAP_LIMITS, representative_images
from ..saliency.methods import DEFAULT_MAP_METHOD
from ..saliency.figures import blend

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1d2430}
h1{margin-bottom:0}h2{border-bottom:1px solid #dde;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #dde;padding:.3em .7em;text-align:left}
th{background:#f3f5f9}.figs img{max-width:48%;margin:.5%}.thumbs figure{display:inline-block;margin:.3em;text-align:center;font-size:.8em}
.thumbs img{width:160px;height:160px;object-fit:cover}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.6em 1em}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em}.muted{color:#667}
"""


def _img_tag(png: bytes, alt: str, extra: str = "") -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}" {extra}>'


def _file_img(path: Path, alt: str) -> str:
    return _img_tag(path.read_bytes(), alt) if path.exists() else f'<p class="muted">({html.escape(alt)}: not available)</p>'


def _blend(gray: np.ndarray, cam: np.ndarray | None, alpha: float = 0.4) -> Image.Image:
    if cam is None:
        return Image.fromarray(gray).convert("RGB")
    cam = np.asarray(Image.fromarray((cam * 255).astype(np.uint8)).resize(gray.shape[::-1])) / 255.0
    return Image.fromarray((blend(gray, cam, alpha) * 255).astype(np.uint8))


def _thumb(path: str, caption: str, cam: np.ndarray | None = None) -> str:
    try:
        arr, _ = read_image(path, 160)
    except CxrlabError:
        return f"<figure><p>unreadable</p><figcaption>{html.escape(caption)}</figcaption></figure>"
    image = _blend(arr, cam)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return f"<figure>{_img_tag(buf.getvalue(), caption)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _table(rows: list[tuple], header: tuple | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _f(value) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _heatmaps(run: RunDir, paths: list[str], method: str) -> tuple[dict[str, np.ndarray], str]:
    """Maps by path, and what they can show (the layer and its native resolution)."""
    if not paths:
        return {}, ""
    from ..saliency import explain

    exp = explain(run, paths, [method])
    return dict(zip(exp.paths, exp.maps[method])), exp.resolution


def write_report(run_dir: str | Path, split: str = "test", top: int = 8, heatmap_method: str | None = DEFAULT_MAP_METHOD,
                 sample: int = 4, seed: int = 0) -> Path:
    """Write RUN/report.html (evaluating the run first when it has not been evaluated). The top
    false negatives and false positives and a random sample are shown with `heatmap_method` maps."""
    run = RunDir(run_dir)
    info = run.read_info()
    metrics_path = run.eval_dir(split) / "metrics.json"
    if not metrics_path.exists():
        from ..evaluation.evaluate import evaluate_run

        evaluate_run(run, split=split)
    m = json.loads(metrics_path.read_text())
    cfg = to_dict(run.read_config())
    task = info["task"]
    if "findings" in task:
        return _write_findings_report(run, info, m, cfg, split)
    title = f"{task['positive']} vs {' / '.join(task['negatives'])}: {info['model']['name']}"
    ci, op, cmat = m["ci95"], m["operating_point"], m["confusion_matrix"]
    counts = [(s, c["images"], c["positives"], c["images"] - c["positives"], c["patients"])
              for s, c in info["counts"].items()]
    metric_rows = [
        ("AUC-ROC", _f(m["auc"]), f"{_f(ci['auc'][0])} - {_f(ci['auc'][1])}"),
        ("sensitivity (recall)", _f(m["sensitivity"]), f"{_f(ci['sensitivity'][0])} - {_f(ci['sensitivity'][1])}"),
        ("specificity", _f(m["specificity"]), f"{_f(ci['specificity'][0])} - {_f(ci['specificity'][1])}"),
        ("accuracy", _f(m["accuracy"]), f"majority-class rate {_f(m['majority_rate'])}"),
        ("balanced accuracy", _f(m["balanced_accuracy"]), ""), ("average precision", _f(m["average_precision"]), ""),
        ("PPV (precision)", _f(m["ppv"]), ""), ("NPV", _f(m["npv"]), ""), ("F1", _f(m["f1"]), ""),
    ]
    eval_dir = run.eval_dir(split)
    fn = m["false_negative_files"][:top]
    fp = m["false_positive_files"][:top]
    preds = pd.read_csv(eval_dir / "predictions.csv")
    if split == "test" and len(preds):  # test images only, one per patient, positives first (saliency)
        paths, drawn = representative_images(run, sample, seed)
        scored = set(preds["path"])
        picked = preds.set_index("path").loc[[p for p in paths if p in scored]].reset_index()
    else:
        picked = preds.sample(min(sample, len(preds)), random_state=seed) if len(preds) else preds
        drawn = f"{len(picked)} images drawn at random (seed {seed})"
    cams, resolution = _heatmaps(run, fn + fp + picked["path"].tolist(), heatmap_method) if heatmap_method else ({}, "")
    caption = dict(zip(preds["path"], (f"{Path(p).name}: {lab}, p={s:.2f}" for p, lab, s in
                                        zip(preds["path"], preds["label"], preds["score"]))))
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='muted'>cxrlab report, run {html.escape(str(run.path))}</p>",
        "<p class='warn'><b>Not a medical device.</b> For teaching and research only; not for diagnosis.</p>",
        "<h2 id='data'>Data</h2>", f"<p>Source: {html.escape(str(info['source']))}</p>",
        _table(counts, ("split", "images", task["positive"], " / ".join(task["negatives"]), "patients")),
        f"<p>Split by patient (no patient in two splits). Excluded by the task: {sum(info['excluded_by_task'].values())} "
        f"images; skipped as unreadable: {len(info['skipped'])}.</p>",
        "".join(f"<p class='muted'>note: {html.escape(n)}</p>" for n in info.get("notes", [])),
        "<h2 id='training'>Training</h2>",
        f"<p>{info['parameters']:,} parameters ({info['trainable_parameters']:,} trainable); {info['epochs_run']} epochs "
        f"in {info['train_seconds']:.0f} s on {html.escape(info['device'])}; best epoch {info['best_epoch']} by "
        f"{html.escape(info['monitor'])}{'; stopped early' if info['stopped_early'] else ''}.</p>",
        f"<div>{_file_img(run.curves, 'learning curves')}</div>",
        f"<h2 id='metrics'>Metrics ({html.escape(m['split'])}: {m['n']} images, {m['positives']} positive, "
        f"{m['patients']} patients)</h2>",
        _table(metric_rows, ("metric", "value", "95% CI")),
        f"<p class='muted'>CIs: {html.escape(m['ci_method'])}.</p>",
        (f"<p class='warn'>AUC undefined: {html.escape(m['auc_undefined_reason'])}</p>" if "auc_undefined_reason" in m else ""),
        "<h2 id='operating-point'>Operating point</h2>",
        f"<p>Threshold <b>{op['threshold']:.6g}</b>, policy <code>{html.escape(op['policy'])}</code>, chosen on the "
        f"validation split ({op['val_images']} images, {op['val_positives']} positive) and applied unchanged here. "
        f"TP {cmat['tp']}, FN {cmat['fn']}, FP {cmat['fp']}, TN {cmat['tn']}.</p>",
        f"<div class='figs'>{_file_img(eval_dir / 'roc.png', 'ROC')}{_file_img(eval_dir / 'confusion.png', 'confusion matrix')}"
        f"{_file_img(eval_dir / 'thresholds.png', 'sensitivity and specificity against threshold')}"
        f"{_file_img(eval_dir / 'pr.png', 'precision-recall')}{_file_img(eval_dir / 'histogram.png', 'score histograms')}</div>",
        "<h2 id='calibration'>Calibration</h2>",
        (f"<p>Brier score {m['calibration']['brier']:.3f}, expected calibration error {m['calibration']['ece']:.3f}"
         f"{'; temperature scaling T = %.3f fitted on validation' % op['temperature'] if op.get('temperature') else ''}.</p>"
         f"<div class='figs'>{_file_img(eval_dir / 'reliability.png', 'reliability diagram')}</div>"
         if "calibration" in m else "<p>Undefined with one class.</p>"),
        "<h2 id='errors'>Errors</h2>",
        (f"<p class='muted'>Heatmaps: {html.escape(heatmap_method)} for the positive class, from {html.escape(resolution)}. "
         f"{html.escape(MAP_LIMITS)}</p>" if heatmap_method else ""),
        f"<h3>False negatives ({cmat['fn']}; lowest scores first)</h3><div class='thumbs'>"
        + "".join(_thumb(p, caption.get(p, Path(p).name), cams.get(p)) for p in fn) + "</div>",
        f"<h3>False positives ({cmat['fp']}; highest scores first)</h3><div class='thumbs'>"
        + "".join(_thumb(p, caption.get(p, Path(p).name), cams.get(p)) for p in fp) + "</div>",
        f"<h3>Sample: {html.escape(drawn)}</h3><div class='thumbs'>"
        + "".join(_thumb(p, caption.get(p, Path(p).name), cams.get(p)) for p in picked["path"]) + "</div>",
        "<h2 id='model-card'>Model card</h2>",
        _table([
            ("intended use", MODEL_CARD["intended_use"].format(positive=task["positive"])),
            ("model", f"{info['model']['name']}, input {info['model']['image_size']} px, "
                      f"{info['model']['in_chans']} channel(s), normalisation {info['model']['normalization']}"),
            ("data", f"{info['source']}; counts above"),
            ("limitations", MODEL_CARD["limitations"]),
            ("not a medical device", "Outputs must not inform clinical decisions."),
            ("versions", ", ".join(f"{k} {v}" for k, v in info["versions"].items())
             + (f"; git {info['git_commit'][:10]}" if info.get("git_commit") else "")),
        ]),
        "<h2 id='configuration'>Configuration</h2>", f"<pre>{html.escape(yaml.safe_dump(cfg, sort_keys=False))}</pre>",
        "</body></html>",
    ]
    run.report.write_text("".join(parts))
    return run.report


def _write_findings_report(run: RunDir, info: dict, m: dict, cfg: dict, split: str) -> Path:
    """The report of a multi-label run: the per-finding table with CIs, CheXNet's published AUCs beside it
    (labelled as another test set), the ROC small multiples and the AUC bars."""
    findings = info["task"]["findings"]
    title = f"{len(findings)} findings: {info['model']['name']}"
    eval_dir = run.eval_dir(split)
    counts = [(s, c["images"], c["patients"]) for s, c in info["counts"].items()]
    per = [(r["finding"], r["positives"], r["negatives"], f"{_f(r['auc'])} [{_f(r['auc_low'])} - {_f(r['auc_high'])}]",
            _f(r["average_precision"]), f"{r['threshold']:.4g}",
            f"{_f(r['sensitivity'])} [{_f(r['sensitivity_low'])} - {_f(r['sensitivity_high'])}]",
            f"{_f(r['specificity'])} [{_f(r['specificity_low'])} - {_f(r['specificity_high'])}]",
            _f(r["chexnet_2017"]) if r["chexnet_2017"] is not None else "")
           for r in m["findings"]]
    low, high = m["macro_auc_ci"]
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='muted'>cxrlab report, run {html.escape(str(run.path))}</p>",
        "<p class='warn'><b>Not a medical device.</b> For teaching and research only; not for diagnosis.</p>",
        "<h2 id='data'>Data</h2>", f"<p>Source: {html.escape(str(info['source']))}; findings: "
        f"{html.escape(', '.join(findings))}.</p>", _table(counts, ("split", "images", "patients")),
        "<p>Split by patient (no patient in two splits), stratified over every finding.</p>",
        "".join(f"<p class='muted'>note: {html.escape(n)}</p>" for n in info.get("notes", [])),
        "<h2 id='training'>Training</h2>",
        f"<p>{info['parameters']:,} parameters; {info['epochs_run']} epochs in {info['train_seconds']:.0f} s on "
        f"{html.escape(info['device'])}; best epoch {info['best_epoch']} by the mean validation AUC over the findings"
        f"{'; stopped early' if info['stopped_early'] else ''}.</p>",
        f"<div>{_file_img(run.curves, 'learning curves')}</div>",
        f"<h2 id='metrics'>Per-finding metrics ({html.escape(m['split'])}: {m['n']} images, {m['patients']} patients)</h2>",
        f"<p>Macro mean AUC <b>{_f(m['macro_auc'])}</b> [95% CI {_f(low)} - {_f(high)}] over "
        f"{len(m['macro_over'])} findings. Sensitivity and specificity at each finding's threshold, chosen on "
        f"validation ({html.escape((m.get('operating_point') or {}).get('policy', ''))}).</p>",
        _table(per, ("finding", "positives", "negatives", "AUC [95% CI]", "AP", "threshold", "sensitivity [CI]",
                     "specificity [CI]", "CheXNet 2017*")),
        f"<p class='muted'>*{html.escape(m['chexnet_note'])}. CIs: {html.escape(m['ci_method'])}. A finding with few "
        "positive patients has a wide interval: read the interval, not the point.</p>",
        f"<div class='figs'>{_file_img(eval_dir / 'auc_bars.png', 'AUC per finding')}</div>",
        f"<div>{_file_img(eval_dir / 'roc_grid.png', 'ROC per finding')}</div>",
        "<h2 id='model-card'>Model card</h2>",
        _table([
            ("intended use", MODEL_CARD["intended_use"].format(positive=", ".join(findings))),
            ("model", f"{info['model']['name']}, {len(findings)} outputs, input {info['model']['image_size']} px, "
                      f"normalisation {info['model']['normalization']}"),
            ("limitations", MODEL_CARD["limitations"]),
            ("not a medical device", "Outputs must not inform clinical decisions."),
        ]),
        "<h2 id='configuration'>Configuration</h2>", f"<pre>{html.escape(yaml.safe_dump(cfg, sort_keys=False))}</pre>",
        "</body></html>",
    ]
    run.report.write_text("".join(parts))
    return run.report
