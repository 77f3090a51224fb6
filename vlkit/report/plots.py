"""PNG plots (matplotlib, Agg backend): accuracy against shots, accuracy against cost with the Pareto front."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from vlkit.report.tables import METRIC_LABELS, Summary, shots_text  # noqa: E402
from vlkit.report.summary import AVERAGE, pareto_front  # noqa: E402

MARKERS = "osD^v<>pPX*h"


LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)))


def method_style(methods: list[str], families: dict[str, str] | None = None) -> dict[str, dict]:
    """A fixed colour, marker and (per method family) line style, the same in every panel and plot.

    Colours come from tab10's ten strong ones (tab20's pale halves are hard to tell from
    their pairs); two methods that share a colour (the 1st and the 11th, ...) differ in
    marker, and in line style when their families differ, so no two lines look alike.
    """
    cmap = plt.get_cmap("tab10")
    family = {m: (families or {}).get(m, "") for m in methods}
    order = list(dict.fromkeys(family.values()))
    return {m: {"color": cmap(i % cmap.N), "marker": MARKERS[i % len(MARKERS)],
                "linestyle": LINESTYLES[(order.index(family[m]) + i // cmap.N) % len(LINESTYLES)]}
            for i, m in enumerate(methods)}


def _legend_by_family(fig: Figure, ax, families: dict[str, str]) -> None:
    """The legend right of the axes (never over the data), grouped under a bold family name when there are several."""
    handles, labels = ax.get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(families.get(label, ""), []).append(label)
    entries: list[tuple] = []
    for family, members in groups.items():
        if len(groups) > 1:
            entries.append((Line2D([], [], linestyle="none"), family or "other"))
        entries += [(by_label[m], m) for m in members]
    columns = 1 if len(entries) <= 18 else 2
    legend = fig.legend([h for h, _ in entries], [t for _, t in entries], loc="center left",
                        bbox_to_anchor=(1.0, 0.5), ncol=columns, fontsize=8, frameon=False)
    for text, (handle, _) in zip(legend.get_texts(), entries):
        if all(handle is not h for h in by_label.values()):  # a family header, even one named like a method
            text.set_fontweight("bold")


def _families(summary: Summary) -> dict[str, str]:
    return {r.method: r.family for r in summary.rows}


def _grid(n: int) -> tuple[int, int]:
    cols = min(3, n)
    return math.ceil(n / cols), cols


def _label_points(ax, fig: Figure, points: list[tuple[str, float, float, bool]]) -> None:
    """Name each point at the nearest free line above or below it, inside the axes (greedy)."""
    fig.canvas.draw()  # fixes the limits and scales so data -> pixel is final
    line = 9 * fig.dpi / 72  # one label height in pixels
    box = ax.get_window_extent()
    placed: list[tuple[float, float, float]] = []  # (x, y, width) in pixels

    def free(px: float, ty: float, width: float) -> bool:
        inside = box.y0 + 2 <= ty <= box.y1 - line and px + width <= box.x1 + 40
        return inside and not any(abs(ty - qy) < line and px < qx + qw and qx < px + width for qx, qy, qw in placed)

    for name, x, y, bold in sorted(points, key=lambda p: (p[2], p[1])):
        px, py = ax.transData.transform((x, y))
        width = (len(name) * 4.2 + 4) * fig.dpi / 72
        base = py + 2 * fig.dpi / 72
        slots = [base + step * line for n in range(12) for step in ((n,) if n == 0 else (n, -n))]
        ty = next((t for t in slots if free(px, t, width)), base)
        placed.append((px, ty, width))
        ax.annotate(name, (x, y), xytext=(4, (ty - py) * 72 / fig.dpi), textcoords="offset points", fontsize=7,
                    fontweight="bold" if bold else "normal", va="bottom",
                    arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.6"} if abs(ty - base) > line / 2 else None)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_accuracy_vs_shots(summary: Summary, path: str | Path) -> Path:
    """One panel per dataset (the average first): a line per method, error bars = std over seeds."""
    metric, panels = summary.metric, summary.panels
    rows, cols = _grid(len(panels))
    width, height = (7.0, 4.8) if len(panels) == 1 else (4.8, 3.7)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    style = method_style(summary.methods, _families(summary))
    if "zero-shot" in style:  # the reference every method should beat: thick and black
        style["zero-shot"].update(color="black", linestyle="-")
    for ax, data in zip(axes.flat, panels):
        for method in summary.methods:
            pts = [(k, r.metrics[metric]) for k in summary.shots
                   if (r := summary.row(data, method, k)) is not None and metric in r.metrics]
            if not pts:
                continue
            ax.errorbar([k for k, _ in pts], [s.mean for _, s in pts], yerr=[s.std for _, s in pts],
                        label=method, capsize=2, linewidth=2.2 if method == "zero-shot" else 1.3, markersize=4,
                        **style[method])
        ax.set_xscale("log", base=2)
        ax.set_xticks(summary.shots, [str(k) for k in summary.shots])
        ax.minorticks_off()
        ax.set_title("average over datasets" if data == AVERAGE else data, fontsize=10)
        ax.set_xlabel("shots per class")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric), fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    seeds = len(summary.seeds)
    fig.suptitle(f"{summary.info.get('model', '')}: accuracy against shots "
                 f"(mean ± std over {seeds} seed{'s' if seeds > 1 else ''})", fontsize=11)
    fig.tight_layout()
    _legend_by_family(fig, axes.flat[0], _families(summary))  # after tight_layout: it sits outside the axes
    return _save(fig, Path(path))


COST_AXES = (("trainable_parameters", "trainable parameters", "symlog"),
             ("fit_seconds", "fit time (s)", "log"))


def plot_accuracy_vs_cost(summary: Summary, path: str | Path) -> Path:
    """Accuracy at the most shots against trainable parameters and against fit time; Pareto front marked."""
    k, data = max(summary.shots), summary.panels[0]
    fig, axes = plt.subplots(1, len(COST_AXES), figsize=(5.6 * len(COST_AXES), 4.4), squeeze=False)
    style = {m: {k: v for k, v in st.items() if k != "linestyle"} for m, st in method_style(summary.methods).items()}
    for ax, (key, label, scale) in zip(axes.flat, COST_AXES):
        points = summary.cost_points(key, data, k)
        if scale == "log":  # a 0 s fit cannot sit on a log axis: floor it at 1 ms
            points = [(m, max(c, 1e-3), a) for m, c, a in points]
        front = pareto_front([(c, a) for _, c, a in points])
        for i, (method, cost, acc) in enumerate(points):
            on_front = i in front
            ax.scatter([cost], [acc], s=60 if on_front else 30, color=style[method]["color"],
                       marker=style[method]["marker"], edgecolors="black" if on_front else "none",
                       linewidths=1.2, zorder=3, label=method)
        if front:
            xs = [points[i][1] for i in front]
            ys = [points[i][2] for i in front]
            ax.step(xs, ys, where="post", color="crimson", linewidth=1.2, linestyle="--", zorder=2,
                    label="Pareto front")
        ax.set_xscale(scale, **({"linthresh": 1} if scale == "symlog" else {}))
        ax.set_xlabel(label + (" (symlog)" if scale == "symlog" else " (log)"))
        ax.set_ylabel(METRIC_LABELS.get(summary.metric, summary.metric), fontsize=8)
        ax.grid(alpha=0.3)
        ax.set_title(f"{'average over datasets' if data == AVERAGE else data}, {shots_text(k)}", fontsize=10)
        ax.margins(x=0.08, y=0.08)
        _label_points(ax, fig, [(m, c, a, i in front) for i, (m, c, a) in enumerate(points)])
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(5, max(1, len(labels))), fontsize=8, frameon=False)
    fig.suptitle("accuracy against cost (ringed points and dashed line: Pareto front, "
                 "cheaper and more accurate is better)", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))
