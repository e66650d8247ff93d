"""`esper-tui plot`: a recording's loss and accuracy curves as an image for a report (PNG or SVG).

The curves are gathered by ui/curves.py, the same ones the dashboard's plot panel shows. matplotlib is
imported only by `render`, so the dashboard never pays for it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from esper_tui.engine.recorder import BadRecording, Recording
from esper_tui.ui.curves import SERIES, Curves, curves_of

MARKER_COLOURS = {"germinate": "tab:green", "fossilize": "tab:blue", "prune": "tab:red", "rollback": "tab:orange"}


def render(curves: Curves, out: Path, title: str) -> None:
    """Loss (top) and accuracy (bottom) over epochs, decisions as dashed verticals; PNG or SVG by suffix."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5), constrained_layout=True)
    try:
        for (name, label), ax in zip(SERIES, (loss_ax, loss_ax, acc_ax, acc_ax), strict=True):
            points = curves.series(name)
            if points:
                ax.plot(
                    [e for e, _ in points],
                    [v for _, v in points],
                    label=label,
                    marker="." if len(points) < 40 else None,
                )
        shown: set[str] = set()
        for marker in curves.markers:
            for ax in (loss_ax, acc_ax):
                ax.axvline(
                    marker.epoch,
                    color=MARKER_COLOURS[marker.kind],
                    linestyle="--",
                    linewidth=0.9,
                    alpha=0.8,
                    label=marker.kind if ax is acc_ax and marker.kind not in shown else None,
                )
            shown.add(marker.kind)
        loss_ax.set_ylabel("loss")
        acc_ax.set_ylabel("accuracy")
        acc_ax.set_xlabel("epoch")
        loss_ax.set_title(title)
        for ax in (loss_ax, acc_ax):
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
        print(f"esper-tui: {file}: no training epoch was recorded, nothing to plot", file=sys.stderr)
        return 1
    try:
        render(curves, out, f"run {curves.run_id or file.stem}: {curves.epochs} epochs")
    except OSError as exc:
        print(f"esper-tui: cannot write {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{out}: {curves.epochs} epochs, {len(curves.markers)} decisions marked")
    return 0
