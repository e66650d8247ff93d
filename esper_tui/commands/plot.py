"""`esper-tui plot`: a recording's loss and metric curves as an image for a report (PNG or SVG).

The curves are gathered by ui/curves.py, the same ones the dashboard's plot panel shows. matplotlib is
imported only by `render`, so the dashboard never pays for it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from esper_tui.engine.recorder import BadRecording, Recording
from esper_tui.ui.curves import SERIES, Curves, curves_of

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


def render(curves: Curves, out: Path, title: str) -> None:
    """Loss (top) and the run's metric (bottom) over epochs, decisions as dashed verticals; PNG or SVG by suffix."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, metric_ax) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5), constrained_layout=True)
    try:
        for (name, label), ax in zip(SERIES, (loss_ax, loss_ax, metric_ax, metric_ax), strict=True):
            colour = None
            for stretch in stretches(curves.series(name)):
                (line,) = ax.plot(
                    [e for e, _ in stretch],
                    [v for _, v in stretch],
                    label=curves.label(name, label) if colour is None else None,
                    color=colour,
                    marker="." if len(stretch) < 40 else None,
                )
                colour = line.get_color()
        shown: set[str] = set()
        for marker in curves.markers:
            for ax in (loss_ax, metric_ax):
                ax.axvline(
                    marker.epoch,
                    color=MARKER_COLOURS[marker.kind],
                    linestyle="--",
                    linewidth=0.9,
                    alpha=0.8,
                    label=marker.kind if ax is metric_ax and marker.kind not in shown else None,
                )
            shown.add(marker.kind)
        metric_ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 12.5 on the axis
        loss_ax.set_ylabel("loss")
        metric_ax.set_ylabel(curves.metric.name)
        metric_ax.set_xlabel("epoch")
        loss_ax.set_title(title)
        for ax in (loss_ax, metric_ax):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize="small")
        fig.savefig(out)
    finally:
        plt.close(fig)


def plot_main(file: Path, out: Path) -> int:
    """`esper-tui plot FILE --out IMAGE`: exit 2 for an unknown image type, 1 for a bad recording or no epochs."""
    if out.suffix.lower() not in (".png", ".svg"):
        print(f"esper-tui: --out must end in .png or .svg (got {out.name!r})", file=sys.stderr)
        return 2
    try:
        with Recording(file) as recording:
            curves = curves_of(recording)
    except BadRecording as exc:
        print(f"esper-tui: {exc}", file=sys.stderr)
        return 1
    if curves.epochs == 0:
        why = (
            f"it resumed at epoch {curves.resumed_from} with nothing left to train"
            if curves.resumed_from is not None
            else "no training epoch was recorded"
        )
        print(f"esper-tui: {file}: {why}, nothing to plot", file=sys.stderr)
        return 1
    try:
        render(curves, out, title_of(curves, file.stem))
    except OSError as exc:
        print(f"esper-tui: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    marked = len(curves.markers)
    trained = curves.epochs - curves.first_epoch + 1
    print(f"{out}: {trained} epoch{'s' * (trained != 1)}, {marked} decision{'s' * (marked != 1)} marked")
    return 0
