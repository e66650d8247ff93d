"""`esper-tui compare A B`: two recorded runs side by side, on a screen, as JSON, as text or as an image.

A and B are recordings or run ids as `runs` lists them (the CLI resolves them). Exit 1 for a recording that
cannot be read or trained nothing (as `replay` and `plot`), 2 for runs that do not compare (another task or
metric) and for an image type that is not .png or .svg.
"""

from __future__ import annotations

from pathlib import Path

from esper_tui.commands.fail import fail
from esper_tui.commands.plot import image_suffix_problem, write_image
from esper_tui.engine.recorder import BadRecording
from esper_tui.ui.comparison import Comparison, Incomparable, NothingTrained, compare, read_run, to_json
from esper_tui.widgets.compare_decisions import decision_lines
from esper_tui.widgets.compare_table import final_table


def text_report(comparison: Comparison) -> str:
    """`--no-ui` without `--json`: the screen's title facts, final table and decisions, as plain lines."""
    metric = comparison.metric
    direction = "higher" if metric.higher_is_better else "lower"
    lines = [f"task {comparison.task or '-'} · {metric.name}, {direction} is better"]
    lines += [f"{side.label} {side.run_id}  {side.path}" for side in comparison.runs]
    lines += ["", final_table(comparison).plain]
    for side in comparison.runs:
        lines += ["", f"decisions of {side.label} {side.run_id}:", decision_lines(side).plain]
    return "\n".join(lines)


def image_title(comparison: Comparison) -> str:
    a, b = comparison.a, comparison.b
    return f"{comparison.task or 'run'}: {a.run_id} (A, solid) vs {b.run_id} (B, dashed)"


def compare_main(a: Path, b: Path, *, no_ui: bool, as_json: bool, out: Path | None, theme: str) -> int:
    """The screen by default; `--no-ui` prints (`--json`: one object), `--out` draws (alone: only that)."""
    if out is not None and (problem := image_suffix_problem(out)) is not None:
        return fail(problem, 2)
    try:
        side_a, curves_a = read_run(a, "A")
        side_b, curves_b = read_run(b, "B")
    except (BadRecording, NothingTrained) as exc:
        return fail(str(exc), 1)
    try:
        comparison = compare(side_a, side_b)
    except Incomparable as exc:
        return fail(str(exc), 2)
    if out is not None:
        if (problem := write_image([("A", curves_a), ("B", curves_b)], out, image_title(comparison))) is not None:
            return fail(problem, 1)
        if not no_ui:
            print(f"{out}: runs {side_a.run_id} (A) and {side_b.run_id} (B), {comparison.task}")
            return 0
    if no_ui:
        print(to_json(comparison).decode() if as_json else text_report(comparison), flush=True)
        return 0
    from esper_tui.ui.compare_app import CompareApp

    CompareApp(comparison, theme=theme).run()
    return 0
