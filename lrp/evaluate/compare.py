"""Compare several explanation methods on the same inputs with the same perturbations.

Every method is explained once; the relevance-based metrics then reuse its relevance,
and every metric of every method draws its randomness (fills, subsets, ROAD noise,
re-initializations) from a fresh generator seeded with ``seed``, so all methods see
identical perturbations.  The result is a table (rows: methods, columns: metrics,
mean ± standard error over the samples), as a pandas DataFrame when pandas is
installed and as plain rows otherwise, plus the MoRF/LeRF curves.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from torch import Tensor, nn

from ..targets import Target
from .complexity import complexity, sparseness
from .correlation import faithfulness_correlation
from .explainers import Explainer, explain_batched, is_method
from .outputs import prepare
from .perturbation import abpc, aopc
from .randomization import model_parameter_randomization, random_logit
from .result import Scores
from .road import road
from .robustness import max_sensitivity

__all__ = ["compare", "Comparison", "METRICS", "DEFAULT_METRICS"]

#: Metric names of :func:`compare` -> the function computing them.
METRICS = {
    "AOPC-MoRF": "pixel_flipping", "AOPC-LeRF": "pixel_flipping", "ABPC": "pixel_flipping",
    "FaithfulnessCorrelation": "faithfulness_correlation", "ROAD-MoRF": "road",
    "ROAD-LeRF": "road", "Sparseness": "sparseness", "Complexity": "complexity",
    "MPRT": "model_parameter_randomization", "RandomLogit": "random_logit",
    "MaxSensitivity": "max_sensitivity",
}
#: Metrics that re-explain (need a composite or a method, not a relevance tensor).
NEEDS_METHOD = ("MPRT", "RandomLogit", "MaxSensitivity")
DEFAULT_METRICS = ("AOPC-MoRF", "AOPC-LeRF", "ABPC", "FaithfulnessCorrelation", "ROAD-MoRF",
                   "Sparseness", "Complexity")


@dataclass
class Comparison:
    """Scores of several methods under the same metrics.

    Attributes
    ----------
    results
        ``results[method][metric]``: the :class:`Scores`.
    """

    results: Dict[str, Dict[str, Scores]] = field(default_factory=dict)

    @property
    def methods(self) -> List[str]:
        return list(self.results)

    @property
    def metrics(self) -> List[str]:
        names: List[str] = []
        for per_method in self.results.values():
            names += [m for m in per_method if m not in names]
        return names

    def direction(self, metric: str) -> str:
        """``"↑"`` if higher is better for ``metric``, else ``"↓"``."""
        for per_method in self.results.values():
            if metric in per_method:
                return "↑" if per_method[metric].higher_is_better else "↓"
        raise KeyError(metric)

    def rows(self) -> List[Dict[str, Any]]:
        """Plain rows: ``{"method": name, metric: mean, metric + " SE": standard error}``."""
        rows = []
        for method, per_method in self.results.items():
            row: Dict[str, Any] = {"method": method}
            for metric in self.metrics:
                s = per_method.get(metric)
                row[metric] = s.mean() if s is not None else math.nan
                row[f"{metric} SE"] = s.sem() if s is not None else math.nan
            rows.append(row)
        return rows

    def table(self):
        """The table as a pandas DataFrame indexed by method (columns: each metric's
        mean and ``"<metric> SE"``), or :meth:`rows` without pandas."""
        try:
            import pandas as pd
        except ImportError:
            return self.rows()
        return pd.DataFrame(self.rows()).set_index("method")

    def markdown(self, digits: int = 3) -> str:
        """A Markdown table with ``mean ± SE`` cells and the better direction per column."""
        metrics = self.metrics
        lines = ["| method | " + " | ".join(f"{m} {self.direction(m)}" for m in metrics) + " |",
                 "|---|" + "---|" * len(metrics)]
        for row in self.rows():
            cells = [_cell(row[m], row[f"{m} SE"], digits) for m in metrics]
            lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: Union[str, Path]) -> Path:
        """Write :meth:`rows` as CSV; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["method"])
            writer.writeheader()
            writer.writerows(rows)
        return path

    def plot_curves(self, path: Union[str, Path, None] = None, metric: str = "ABPC"):
        """Mean perturbation curves (MoRF solid, LeRF dashed) of every method, with a
        legend; saved as PNG when ``path`` is given.  Needs matplotlib
        (``pip install 'lrp[plot]'``).

        Returns
        -------
        matplotlib.figure.Figure
        """
        try:
            import matplotlib
            if path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("plot_curves needs matplotlib: pip install 'lrp[plot]'") from None
        fig, ax = plt.subplots(figsize=(9, 4.5))
        n = len(self.results)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"] if n <= 10 else [
            plt.get_cmap("tab20")(i % 20) for i in range(n)]
        for i, (method, per_method) in enumerate(self.results.items()):
            s = per_method.get(metric) or per_method.get("AOPC-MoRF") or per_method.get("AOPC-LeRF")
            if s is None or s.steps is None:
                continue
            color = colors[i % len(colors)]
            for order, style in (("morf", "-"), ("lerf", "--")):
                if order in s.curves:
                    curve = s.curves[order].double().mean(dim=0).cpu()
                    ax.plot(s.steps.cpu(), curve, style, color=color,
                            label=f"{method} ({'MoRF' if order == 'morf' else 'LeRF'})")
        ax.set_xlabel("fraction of patches replaced")
        ax.set_ylabel("explained output f(x)")
        ax.set_title("Perturbation curves: MoRF (solid) and LeRF (dashed), mean over samples")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=120)
        return fig


def _cell(mean: float, se: float, digits: int) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if not math.isnan(se) else f"{mean:.{digits}f}"


def compare(model: nn.Module, inputs: Tensor, methods: Mapping[str, Explainer],
            target: Target = None, *, metrics: Sequence[str] = DEFAULT_METRICS,
            options: Optional[Mapping[str, Mapping[str, Any]]] = None, seed: int = 0,
            batch_size: int = 256, progress: Optional[bool] = None,
            on_method: Optional[Callable[[str], None]] = None) -> Comparison:
    """Evaluate several methods with the same metrics, inputs and perturbations.

    Parameters
    ----------
    model, inputs, target
        As in :func:`lrp.evaluate.pixel_flipping`.  The targets are resolved once.
    methods
        Name -> relevance tensor, lrp composite or method
        (see :mod:`lrp.evaluate.explainers`).
    metrics
        Names from :data:`METRICS` (``"MPRT"``, ``"RandomLogit"`` and
        ``"MaxSensitivity"`` are skipped for relevance tensors).
    options
        Keyword arguments per metric function, e.g. ``{"pixel_flipping":
        {"patch_size": 4, "fill": "min"}, "road": {"percentages": [20, 50, 80]}}``
        (``pixel_flipping`` options apply to the AOPC and ABPC columns).
    seed
        Seed of every metric's generator (the same for every method).
    batch_size
        Memory bound: inputs per forward pass (and samples explained at once).
    progress
        Progress bars of the metrics.
    on_method
        Called with each method's name before it is evaluated (e.g. to print progress).

    Returns
    -------
    Comparison
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; valid: {', '.join(METRICS)}")
    options = {k: dict(v) for k, v in (options or {}).items()}
    bad = [k for k in options if k not in set(METRICS.values())]
    if bad:
        raise ValueError(f"options for unknown metric functions {bad}; valid: "
                         f"{', '.join(sorted(set(METRICS.values())))}")
    x, _, t, batch_size = prepare(model, inputs, target, batch_size)
    common = dict(batch_size=batch_size, progress=progress)
    result = Comparison()
    for name, explainer in methods.items():
        if on_method is not None:
            on_method(name)
        relevance = (explain_batched(explainer, model, x, t, batch_size) if is_method(explainer)
                     else explainer)
        scores: Dict[str, Scores] = {}

        def run(fn, key, explanation=relevance, **kw):
            return fn(model, x, explanation, t, generator=seed, **{**kw, **options.get(key, {})})

        if {"AOPC-MoRF", "AOPC-LeRF", "ABPC"} & set(metrics):
            s = run(abpc, "pixel_flipping", **common)
            if "AOPC-MoRF" in metrics:
                scores["AOPC-MoRF"] = Scores("AOPC-MoRF", aopc(s.curves["morf"]), True,
                                             {"morf": s.curves["morf"]}, s.steps)
            if "AOPC-LeRF" in metrics:
                scores["AOPC-LeRF"] = Scores("AOPC-LeRF", aopc(s.curves["lerf"]), False,
                                             {"lerf": s.curves["lerf"]}, s.steps)
            if "ABPC" in metrics:
                scores["ABPC"] = s
        if "FaithfulnessCorrelation" in metrics:
            scores["FaithfulnessCorrelation"] = run(faithfulness_correlation,
                                                    "faithfulness_correlation", **common)
        for order in ("MoRF", "LeRF"):
            if f"ROAD-{order}" in metrics:
                scores[f"ROAD-{order}"] = run(road, "road", order=order.lower(), **common)
        if "Sparseness" in metrics:
            scores["Sparseness"] = sparseness(model, x, relevance, t, **options.get("sparseness", {}))
        if "Complexity" in metrics:
            scores["Complexity"] = complexity(model, x, relevance, t, **options.get("complexity", {}))
        if is_method(explainer):
            if "MPRT" in metrics:
                scores["MPRT"] = run(model_parameter_randomization, "model_parameter_randomization",
                                     explainer, batch_size=batch_size, progress=progress)
            if "RandomLogit" in metrics:
                scores["RandomLogit"] = run(random_logit, "random_logit", explainer,
                                            batch_size=batch_size, progress=progress)
            if "MaxSensitivity" in metrics:
                scores["MaxSensitivity"] = run(max_sensitivity, "max_sensitivity", explainer,
                                               batch_size=batch_size, progress=progress)
        result.results[name] = {m: scores[m] for m in metrics if m in scores}
    return result
