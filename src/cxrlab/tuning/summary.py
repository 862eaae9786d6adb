"""After a search: trials.csv, best.yaml, Optuna's figures, one offline HTML page, and the best trial
scored once on test (the only time the search touches the test split)."""

from __future__ import annotations

import base64
import json
import math
import warnings
from pathlib import Path

import jinja2
import optuna
import pandas as pd
from optuna.trial import TrialState

from ..config import save_yaml
from ..runs import atomic_write
from .space import apply
from .study import SURPLUS, Search, counts, duration

TEST_ATTR = "cxrlab:test"  # the best trial's test result, stored in the study so every machine reports it
FIGURES = {  # file -> (title, Optuna's matplotlib function)
    "history.png": ("Optimisation history", "plot_optimization_history"),
    "importances.png": ("Parameter importances (fANOVA)", "plot_param_importances"),
    "parallel.png": ("Parallel coordinates", "plot_parallel_coordinate"),
    "slices.png": ("Slices: the metric against each parameter", "plot_slice"),
}


def trials_frame(study: optuna.Study, search: Search) -> pd.DataFrame:
    """One row per trial that trained (surplus trials never did): parameters, metric, state, seconds,
    epochs, run directory, host, the trial it retried."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get(SURPLUS):
            continue
        rows.append({"number": t.number, "state": t.state.name.lower(), search.metric: t.value,
                     **{f"param_{k}": v for k, v in t.params.items()}, "seconds": duration(t),
                     "epochs_run": t.user_attrs.get("epochs_run"), "run_dir": t.user_attrs.get("run_dir"),
                     "host": t.user_attrs.get("host"), "retry_of": t.system_attrs.get("failed_trial"),
                     "error": t.user_attrs.get("error")})
    return pd.DataFrame(rows)


def score_best_on_test(study: optuna.Study, best: optuna.trial.FrozenTrial) -> dict | None:
    """The best trial's test AUC with its patient-bootstrap CI: computed once (by the first machine that
    holds the trial's run directory), stored in the study, read back by every later call."""
    stored = study.user_attrs.get(TEST_ATTR)
    if stored and stored.get("number") == best.number:
        return stored
    run_dir = best.user_attrs.get("run_dir")
    if not run_dir or not (Path(run_dir) / "run.json").exists():
        return None  # trained on another machine: that machine's summary scores it
    from ..evaluation.evaluate import evaluate_run

    metrics = evaluate_run(run_dir)
    result = {"number": best.number, "auc": metrics["auc"], "ci95": metrics["ci95"]["auc"],
              "sensitivity": metrics["sensitivity"], "specificity": metrics["specificity"],
              "threshold": metrics["threshold"], "run_dir": run_dir}
    study.set_user_attr(TEST_ATTR, result)
    return result


def draw_figures(study: optuna.Study, out: Path) -> dict[str, str]:
    """Optuna's own matplotlib figures; a figure that cannot be drawn yet (one complete trial, one
    parameter) is skipped with the reason."""
    import matplotlib
    import matplotlib.pyplot as plt  # Optuna's matplotlib plots are drawn with pyplot
    from optuna.visualization import matplotlib as vis

    drawn = {}
    for name, (title, function) in FIGURES.items():
        try:
            # rc_context: Optuna's plots switch pyplot to its ggplot style for good; the caller's style comes back
            with warnings.catch_warnings(), matplotlib.rc_context():
                warnings.simplefilter("ignore")
                axes = getattr(vis, function)(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            drawn[name] = f"not drawn: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            continue
        first = axes.flat[0] if hasattr(axes, "flat") else axes
        figure = first.figure
        if not hasattr(axes, "flat"):
            figure.set_size_inches(7, 4.5)
        else:
            figure.set_size_inches(min(4 * len(axes.flat), 16), 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # parallel coordinates' colour bar is not tight-layout compatible
            figure.tight_layout()
        figure.savefig(out / name, dpi=110)
        plt.close(figure)
        drawn[name] = title
    return drawn


def summarise(study: optuna.Study, search: Search) -> tuple[dict, pd.DataFrame]:
    """Write DIR/trials.csv, best.yaml, summary.json, the figures and summary.html; returns the summary
    and the trials table."""
    out = Path(search.out)
    frame = trials_frame(study, search)
    atomic_write(out / "trials.csv", frame.to_csv(index=False).encode())
    n = counts(study)
    summary = {"study": study.study_name, "storage": search.storage or f"journal:{out / 'study.journal'}",
               "metric": search.metric, "direction": study.direction.name.lower(), "trials_requested": search.n_trials,
               **{k: n[k] for k in ("complete", "pruned", "failed")}, "best": None, "test": None}
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if complete:
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "run_dir": best.user_attrs.get("run_dir"), "host": best.user_attrs.get("host")}
        save_yaml(apply(search.base_config(), best.params), out / "best.yaml")
        test = score_best_on_test(study, best)
        summary["test"] = test
        if test is not None and search.metric == "val_auc":
            # choosing the best of N on validation flatters it: the gap is what the search's choice cost
            summary["optimism"] = best.value - test["auc"]
    summary["figures"] = draw_figures(study, out) if complete else {}
    atomic_write(out / "summary.json", json.dumps(summary, indent=2, default=_plain).encode())
    atomic_write(out / "summary.html", _html(summary, frame, out).encode())
    return summary, frame


def _plain(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


PAGE = jinja2.Template("""<!doctype html><html lang="en"><meta charset="utf-8"><title>cxrlab tune: {{ s.study }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#1d2430}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #dde;padding:.25em .5em}th{background:#f3f5f9}
img{max-width:100%}.muted{color:#667}</style>
<h1>Search {{ s.study }}</h1>
<p>{{ s.complete }} complete, {{ s.pruned }} pruned, {{ s.failed }} failed of {{ s.trials_requested }} requested;
metric {{ s.metric }} ({{ s.direction }}) on validation only. Storage: <code>{{ s.storage }}</code>.</p>
{% if s.best %}<h2>Best trial: #{{ s.best.number }}</h2>
<p>validation {{ s.metric }} <b>{{ "%.4f"|format(s.best.value) }}</b>{% if s.test %}; test AUC, scored once at the end,
<b>{{ "%.4f"|format(s.test.auc) }}</b> [95% CI {{ "%.4f"|format(s.test.ci95[0]) }}, {{ "%.4f"|format(s.test.ci95[1]) }}]
{% if s.optimism is defined %}(validation minus test: {{ "%+.4f"|format(s.optimism) }}, the optimism of picking the best of
{{ s.complete }} on validation){% endif %}{% else %}<span class="muted"> (its test score is made on the machine that trained it)</span>{% endif %}.</p>
<p>Parameters: {% for k, v in s.best.params.items() %}<code>{{ k }}={{ v }}</code> {% endfor %};
<code>cxrlab train --config best.yaml</code> repeats it.</p>{% endif %}
{% for name, title in s.figures.items() %}<h3>{{ title if not title.startswith("not drawn") else name }}</h3>
{% if name in images %}<img alt="{{ title }}" src="data:image/png;base64,{{ images[name] }}">{% else %}<p class="muted">{{ title }}</p>{% endif %}
{% endfor %}
<h2>Trials</h2>{{ table }}
</html>""", autoescape=True)


def _html(summary: dict, frame: pd.DataFrame, out: Path) -> str:
    images = {name: base64.b64encode((out / name).read_bytes()).decode()
              for name, title in summary["figures"].items() if not title.startswith("not drawn") and (out / name).exists()}
    table = frame.drop(columns=["error"], errors="ignore").to_html(index=False, na_rep="", float_format="%.4g")
    return PAGE.render(s=summary, images=images, table=jinja2.utils.markupsafe.Markup(table))
