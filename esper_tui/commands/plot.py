"""`esper-tui plot`: a recording's loss and metric curves as an image for a report (PNG or SVG).

The curves are gathered by ui/curves.py, the same ones the dashboard's plot panel shows; `render` draws one run
here and two overlaid for `esper-tui compare --out`. matplotlib is imported only by `render`, so the dashboard
never pays for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from esper_tui.commands.fail import fail
from esper_tui.engine.recorder import BadRecording, Recording
from esper_tui.ui.curves import METRIC_SERIES, SERIES, Curves, curves_of, untrained_reason

MARKER_COLOURS = {"germinate": "tab:green", "fossilize": "tab:blue", "prune": "tab:red", "rollback": "tab:orange"}


def stretches(points: list[tuple[int, float]]) -> list[list[tuple[int, float]]]:
    """A series cut where epochs are missing: a line joins only neighbouring epochs. Validation loss and the
    test split are known only at the epochs a snapshot was recorded; straight lines across the epochs between
    drew values nobody measured."""
    out: list[list[tuple[int, float]]] = []
    for point in points:
        if out and point[0] == out[-1][-1][0] + 1:
            out[-1].append(point)
        else:
            out.append([point])
    return out


def title_of(curves: Curves, fallback: str) -> str:
    """ "run ID: 30 epochs", or for a resumed run the epochs it trained: "run ID: epochs 13-30 (resumed at 12)"."""
    run = f"run {curves.run_id or fallback}"
    if curves.first_epoch <= 1:
        return f"{run}: {curves.epochs} epochs"
    resumed = f" (resumed at {curves.resumed_from})" if curves.resumed_from is not None else ""
    return f"{run}: epochs {curves.first_epoch}-{curves.epochs}{resumed}"


RUN_STYLES = ("-", "--")
"""Line style of run A and run B where two runs share the axes (`compare`); a split keeps its colour in both."""
MARKER_STYLES = ("--", ":")
"""Line style of run A's and run B's decision markers (one run: dashed, as always)."""


def render(runs: Sequence[tuple[str, Curves]], out: Path, title: str) -> None:
    """Loss (top) and the run's metric (bottom) over epochs, decisions as verticals; PNG or SVG by suffix.

    One run (`plot`, its label "") or two overlaid (`compare`, labelled A and B): the same code draws both, so
    an image of one run and of a comparison read alike. Two runs: B's lines are dashed, its markers dotted."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, metric_ax) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5), constrained_layout=True)
    try:
        for index, (name, label) in enumerate(SERIES):
            ax = metric_ax if name in METRIC_SERIES else loss_ax
            for (run, curves), style in zip(runs, RUN_STYLES, strict=False):
                legend: str | None = f"{run} {curves.label(name, label)}".strip()
                for stretch in stretches(curves.series(name)):
                    ax.plot(
                        [e for e, _ in stretch],
                        [v for _, v in stretch],
                        label=legend,
                        color=f"C{index % 2}",  # each axes: the first split C0, the second C1
                        linestyle=style,
                        marker="." if len(stretch) < 40 else None,
                    )
                    legend = None
        shown: set[str] = set()
        for (_, curves), style in zip(runs, MARKER_STYLES, strict=False):
            for marker in curves.markers:
                for ax in (loss_ax, metric_ax):
                    ax.axvline(
                        marker.epoch,
                        color=MARKER_COLOURS[marker.kind],
                        linestyle=style,
                        linewidth=0.9,
                        alpha=0.8,
                        label=marker.kind if ax is metric_ax and marker.kind not in shown else None,
                    )
                shown.add(marker.kind)
        metric_ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 12.5 on the axis
        loss_ax.set_ylabel("loss")
        metric_ax.set_ylabel(runs[0][1].metric.name)
        metric_ax.set_xlabel("epoch")
        loss_ax.set_title(title)
        for ax in (loss_ax, metric_ax):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize="small")
        fig.savefig(out)
    finally:
        plt.close(fig)


def image_suffix_problem(out: Path) -> str | None:
    """Why `out` cannot be written as an image (`plot` and `compare` take .png or .svg), or None."""
    if out.suffix.lower() in (".png", ".svg"):
        return None
    return f"--out must end in .png or .svg (got {out.name!r})"


def write_image(runs: Sequence[tuple[str, Curves]], out: Path, title: str) -> str | None:
    """`render`, with a file that cannot be written as one line (returned), not a traceback."""
    try:
        render(runs, out, title)
    except OSError as exc:
        return f"cannot write {out}: {exc.strerror or exc}"
    return None


def plot_main(file: Path, out: Path) -> int:
    """`esper-tui plot FILE --out IMAGE`: exit 2 for an unknown image type, 1 for a bad recording or no epochs."""
    if (problem := image_suffix_problem(out)) is not None:
        return fail(problem, 2)
    try:
        with Recording(file) as recording:
            curves = curves_of(recording)
    except BadRecording as exc:
        return fail(str(exc), 1)
    if (why := untrained_reason(curves)) is not None:
        return fail(f"{file}: {why}, nothing to plot", 1)
    if (problem := write_image([("", curves)], out, title_of(curves, file.stem))) is not None:
        return fail(problem, 1)
    marked = len(curves.markers)
    trained = curves.epochs - curves.first_epoch + 1
    print(f"{out}: {trained} epoch{'s' * (trained != 1)}, {marked} decision{'s' * (marked != 1)} marked")
    return 0
