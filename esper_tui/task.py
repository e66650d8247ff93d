"""The public Task API: what a task file imports to hand the control room its model and data.

    from esper_tui.task import Data, Metric, Slot, Task, TaskContext, accuracy, adam, cross_entropy

    def factory(ctx: TaskContext) -> Task: ...

and run it with `esper-tui --task path/to/file.py:factory`. The README's "Your model, your data: tasks" walks
through examples/waveforms.py; engine/training/task.py documents every field and its range.
"""

from esper_tui.engine.training.task import (
    Data,
    Metric,
    Slot,
    Split,
    Task,
    TaskContext,
    TaskError,
    accuracy,
    adam,
    cross_entropy,
)

__all__ = [
    "Data",
    "Metric",
    "Slot",
    "Split",
    "Task",
    "TaskContext",
    "TaskError",
    "accuracy",
    "adam",
    "cross_entropy",
]
