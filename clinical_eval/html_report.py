"""The self-contained HTML report of a validation study: a Jinja2 template (package data) plus inline SVG plots."""

from __future__ import annotations

import io
from importlib import resources
from typing import Any

from jinja2 import Environment, select_autoescape
from markupsafe import Markup

__all__ = ["render_report"]


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib: only when a plot is drawn

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prologue and DOCTYPE: the SVG sits inside HTML


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - matplotlib: only when a plot is drawn

    matplotlib.use("Agg")  # headless: no display on a hospital server
    import matplotlib.pyplot as plt  # noqa: PLC0415 - matplotlib: loaded after the Agg backend is chosen

    plt.rcParams["svg.fonttype"] = "none"  # keep text as text: smaller and searchable
    return plt


def _per_label_plot(per_label: dict[str, Any]) -> str:
    plt = _pyplot()
    names = list(per_label)
    values = [per_label[n]["f1"]["value"] for n in names]
    low = [v - per_label[n]["f1"]["ci_low"] for n, v in zip(names, values, strict=True)]
    high = [per_label[n]["f1"]["ci_high"] - v for n, v in zip(names, values, strict=True)]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh(names, values, xerr=[low, high], color="#4c72b0", capsize=3)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (positive)")
    return _svg(fig)


def _judge_plot(per_category: dict[str, Any]) -> str:
    plt = _pyplot()
    names = list(per_category)
    sig = [per_category[c]["significant"]["value"] for c in names]
    insig = [per_category[c]["insignificant"]["value"] for c in names]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.barh(names, sig, color="#c44e52", label="clinically significant")
    ax.barh(names, insig, left=sig, color="#dd8452", label="not significant")
    ax.invert_yaxis()
    ax.set_xlabel("mean errors per report")
    ax.legend(loc="lower right")
    return _svg(fig)


def _confusion_plot(labels: list[str], matrix: list[list[int]]) -> str:
    plt = _pyplot()
    size = max(3.0, 0.7 * len(labels) + 1.5)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(r) for r in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    return _svg(fig)


def _calibration_plot(calibration: dict[str, Any]) -> str:
    plt = _pyplot()
    bins = calibration["bins"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", label="perfect")
    ax.plot([b["mean_confidence"] for b in bins], [b["observed_rate"] for b in bins], marker="o", label="model")
    ax.set_xlabel("mean confidence of error")
    ax.set_ylabel("observed error rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend()
    return _svg(fig)


def render_report(result: dict[str, Any]) -> str:
    """Render the HTML report of a study result (as :func:`run_validation_study` builds it)."""
    metrics = result["metrics"]
    plots: dict[str, str] = {}
    if result["task"] == "report":
        plots["per_label"] = _per_label_plot(metrics["clinical"]["per_label_positive"])
        for name, judged in metrics["judges"].items():
            plots[f"judge:{name}"] = _judge_plot(judged["per_category"])
    else:
        cm = metrics["simple"]["confusion_matrix"]
        plots["simple_confusion"] = _confusion_plot(cm["labels"], cm["matrix"])
        if "calibration" in metrics["simple"]:
            plots["calibration"] = _calibration_plot(metrics["simple"]["calibration"])
        if "complex" in metrics:
            cm = metrics["complex"]["confusion_matrix"]
            plots["complex_confusion"] = _confusion_plot(cm["labels"], cm["matrix"])
    template = resources.files("radlvlm.clinical_eval").joinpath("templates/report.html.j2").read_text("utf-8")
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    return env.from_string(template).render(
        task=result["task"],
        stamp=result["stamp"],
        counts=result["counts"],
        metrics=metrics,
        comparison=result.get("comparison"),
        plots={k: Markup(v) for k, v in plots.items()},  # our own SVG, built above from numbers only
    )
