"""The detail views' costs on a long run: frame bytes, how fast a detail screen opens, the dashboard's CPU at 4 Hz.

    python -m benchmarks.detail [--epochs 400] [--opens 40] [--cpu-seconds 20] [--json FILE]

What runs: the story of benchmarks/story.py (`--epochs` epochs: a forge with retries, seeds germinating, blending,
fossilized and pruned, a rollback, field reports) folded by the real Aggregator, and the real dashboard
(`EsperApp.run_test()`, Textual's headless driver) over a link that answers from that aggregator as a local engine
does (`latest()` its snapshot, `details()` and `event_log()` its history).

- **frames**: the keyframe and the mean delta (one snapshot per epoch) the broadcaster would publish, and the
  details entry a control room gets while it asks for them. The history is no field of the snapshot, so frames
  carry none of it: `details_in_keyframe_factor` is how much bigger every keyframe would be if they did.
- **open**: each detail screen (seed, job, decision, event, run info) opened `--opens` times: from the call that
  opens it to the first frame that shows its body (the details fetched, frozen, rendered, wrapped, composed and
  turned into the bytes a terminal would be sent, which the headless driver itself skips), p50/p95/max in ms of
  wall time; and this process's CPU time over the open and Pilot's idle wait after it (`*_cpu`: what it costs
  whatever else the machine runs). `filter_tamiyo`: the `/ tamiyo` filter over the whole scrollback, to the last
  frame it draws. The app settles its heap once drawn, as the `esper-tui` entries do (esper_tui/ui/heap.py).
  Target: p95 < 100 ms.
- **replay**: rebuilding the history from a recording of the run (once per replay, in a thread) and cutting it
  back to a moment (each time a screen refreshes).
- **cpu**: the dashboard open at 4 Hz for `--cpu-seconds` while the story is fed at one epoch per 0.5 s (folding
  included): process CPU seconds per wall second, unfocused and with the event log focused (reading the scrollback
  at every snapshot). Target: < 5 % of a core. `feed_only` is the same feeding with no dashboard.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual._compositor import CompositorUpdate

from benchmarks.report import write_json
from benchmarks.story import story
from esper_tui.engine.aggregator import Aggregator
from esper_tui.engine.codec import encode_msgpack
from esper_tui.engine.contracts import AnyCommand, AnyEvent, EpochCompleted
from esper_tui.engine.frames import FrameEncoder
from esper_tui.engine.history import Details, LogEntry
from esper_tui.engine.history_replay import as_of, rebuild
from esper_tui.engine.recorder import Recording, RecordingWriter
from esper_tui.engine.snapshot import Snapshot
from esper_tui.engine.vocabulary import Subsystem
from esper_tui.ui.app import EsperApp
from esper_tui.ui.details.base import DetailScreen
from esper_tui.widgets.content_view import ContentView

TARGET_OPEN_MS = 100.0
TARGET_CPU = 0.05


class AggregatorLink:
    """What the dashboard sees of a local engine: the aggregator's snapshot, details and scrollback."""

    def __init__(self, agg: Aggregator) -> None:
        self.agg = agg

    def latest(self) -> Snapshot | None:
        return self.agg.snapshot()

    def details(self) -> Details:
        return self.agg.details()

    def event_log(self) -> list[LogEntry]:
        return list(self.agg.history.log)

    async def send(self, command: AnyCommand) -> None:
        pass


def fold(events: list[AnyEvent], clock: list[float]) -> Aggregator:
    agg = Aggregator(clock=lambda: clock[0])
    for event in events:
        clock[0] = event.ts
        agg.apply(event)
    return agg


def frames(events: list[AnyEvent]) -> dict[str, Any]:
    clock = [0.0]
    agg = Aggregator(clock=lambda: clock[0])
    encoder = FrameEncoder(keyframe_every_s=1e9, clock=lambda: 0.0)
    deltas: list[int] = []
    keyframe = 0
    for event in events:
        clock[0] = event.ts
        agg.apply(event)
        if isinstance(event, EpochCompleted):
            data, is_key = encoder.encode(agg.snapshot())
            if is_key:
                keyframe = len(data)
            else:
                deltas.append(len(data))
    final_key = len(FrameEncoder().encode(agg.snapshot(), keyframe=True)[0])
    details = len(encode_msgpack(agg.details()))
    return {
        "keyframe_bytes_first": keyframe,
        "keyframe_bytes_end": final_key,
        "delta_bytes_mean": round(statistics.fmean(deltas), 1) if deltas else 0,
        "details_entry_bytes": details,
        "details_in_keyframe_factor": round((final_key + details) / final_key, 1),
    }


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50": round(statistics.median(ordered), 2), "p95": round(p95, 2), "max": round(ordered[-1], 2)}


def frame_clock(app: EsperApp) -> list[float]:
    """When each frame was drawn (over a detail screen: each that shows its body laid out). Textual's `_display`
    is wrapped to also produce the terminal bytes (as a real driver would; the headless one skips that) and note
    the time: a private method, patched in this benchmark only, as there is no public hook when a frame is done."""
    drawn: list[float] = []
    display = app._display

    def timed(screen: Any, renderable: Any) -> None:
        display(screen, renderable)
        if isinstance(renderable, CompositorUpdate):
            renderable.render_segments(app.console)
            if not isinstance(screen, DetailScreen) or screen.query_one(ContentView).laid_out:
                drawn.append(time.perf_counter())

    app._display = timed  # type: ignore[method-assign]
    return drawn


async def opens(agg: Aggregator, count: int) -> dict[str, dict[str, float]]:
    app = EsperApp(AggregatorLink(agg), settle_heap=True)
    drawn = frame_clock(app)
    details = agg.details()
    decision = next(e for e in reversed(details.log) if e.line.source is Subsystem.TAMIYO)
    other = next(e for e in reversed(details.log) if e.line.source is Subsystem.TEZZERET)
    job = details.jobs[0]
    openers: dict[str, Callable[[], None]] = {
        "seed": lambda: app.open_seed("s0"),
        "job": lambda: app.open_job(job.blueprint_id, job.shape),
        "decision": lambda: app.open_entry(decision),
        "event": lambda: app.open_entry(other),
        "run_info": app.action_run_info,
    }
    results: dict[str, dict[str, float]] = {}
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        for name, open_it in openers.items():
            samples, cpu_samples = [], []
            for _ in range(count):
                drawn.clear()
                t0, c0 = time.perf_counter(), time.process_time()
                open_it()
                await pilot.pause()
                assert isinstance(app.screen, DetailScreen) and app.screen.details is not None and drawn
                samples.append((drawn[0] - t0) * 1000)
                cpu_samples.append((time.process_time() - c0) * 1000)
                app.pop_screen()
                await pilot.pause()
            results[name] = _ms(samples)
            results[f"{name}_cpu"] = _ms(cpu_samples)
        panel = app.dashboard.events_panel
        samples = []
        for _ in range(count):
            drawn.clear()
            t0 = time.perf_counter()
            panel.set_filter("tamiyo")
            await pilot.pause()
            assert drawn
            samples.append((drawn[-1] - t0) * 1000)
            panel.set_filter("")
            await pilot.pause()
        results["filter_tamiyo"] = _ms(samples)
    return results


def replay(events: list[AnyEvent]) -> dict[str, Any]:
    clock = [0.0]
    agg = Aggregator(clock=lambda: clock[0])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.esrec"
        writer = RecordingWriter(path)
        last = -1
        for event in events:
            clock[0] = event.ts
            agg.apply(event)
            snapshot = agg.snapshot()
            if snapshot.seq != last:
                writer.write(snapshot)
                last = snapshot.seq
        writer.close()
        with Recording(path) as recording:
            t0 = time.perf_counter()
            history = rebuild(recording.frames(), scrollback=2000)
            rebuild_s = time.perf_counter() - t0
            details = history.details("run-0001", recording.entries[-1].ts)
            middle = recording.entries[len(recording) // 2].ts
            samples = []
            for _ in range(20):
                t0 = time.perf_counter()
                as_of(details, middle)
                samples.append((time.perf_counter() - t0) * 1000)
            return {"snapshots": len(recording), "rebuild_s": round(rebuild_s, 2), "as_of_ms": _ms(samples)}


async def cpu(
    events: list[AnyEvent], start: float, seconds: float, *, dashboard: bool, focus_log: bool = False
) -> float:
    """Process CPU seconds per wall second while the story from `start` on is fed at one epoch per 0.5 s (what came
    before folded first, so the scrollback is already deep)."""
    clock = [events[0].ts]
    agg = Aggregator(clock=lambda: clock[0])
    for event in events:
        if event.ts < start:
            clock[0] = event.ts
            agg.apply(event)
    pending = [e for e in events if e.ts >= start]

    async def feed(stop: float) -> None:
        start_wall, start_ts = time.monotonic(), pending[0].ts
        while pending and time.monotonic() < stop:
            due = start_ts + (time.monotonic() - start_wall)
            while pending and pending[0].ts <= due:
                event = pending.pop(0)
                clock[0] = event.ts
                agg.apply(event)
            await asyncio.sleep(0.05)

    if not dashboard:
        c0, w0 = time.process_time(), time.monotonic()
        await feed(w0 + seconds)
        return (time.process_time() - c0) / (time.monotonic() - w0)
    app = EsperApp(AggregatorLink(agg), refresh_hz=4.0, settle_heap=True)
    async with app.run_test(size=(160, 50)) as pilot:
        await pilot.pause()
        if focus_log:
            app.dashboard.events_panel.focus()
            await pilot.pause()
        c0, w0 = time.process_time(), time.monotonic()
        await feed(w0 + seconds)
        return (time.process_time() - c0) / (time.monotonic() - w0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.detail", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--opens", type=int, default=40)
    parser.add_argument("--cpu-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.epochs < 10 or args.opens < 1 or args.cpu_seconds <= 0:
        print("benchmarks.detail: --epochs >= 10, --opens >= 1, --cpu-seconds > 0", file=sys.stderr)
        return 2
    events = story(args.epochs)
    agg = fold(events, [0.0])
    details = agg.details()
    result: dict[str, Any] = {
        "epochs": args.epochs,
        "events": len(events),
        "log_lines": len(details.log),
        "decisions": len(details.decisions),
        "frames": frames(events),
        "open_ms": asyncio.run(opens(agg, args.opens)),
        "replay": replay(events),
    }
    # fed at one epoch per 0.5 s for the seconds asked for, from a third of the run on (a deep scrollback already)
    start = events[0].ts + 5 + args.epochs * 0.5 / 3
    result["cpu_core_fraction"] = {
        "feed_only": round(asyncio.run(cpu(events, start, args.cpu_seconds, dashboard=False)), 4),
        "dashboard": round(asyncio.run(cpu(events, start, args.cpu_seconds, dashboard=True)), 4),
        "dashboard_log_focused": round(
            asyncio.run(cpu(events, start, args.cpu_seconds, dashboard=True, focus_log=True)), 4
        ),
    }
    f = result["frames"]
    print(f"story: {args.epochs} epochs, {len(events)} events, {len(details.log)} log lines")
    print(
        f"frames: keyframe {f['keyframe_bytes_end']} B, delta {f['delta_bytes_mean']} B mean; "
        f"details entry {f['details_entry_bytes']} B (only while a room asks; x{f['details_in_keyframe_factor']} "
        "if every keyframe carried it)"
    )
    print(f"{'open':<16}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}")
    for name, ms in result["open_ms"].items():
        print(f"{name:<16}{ms['p50']:>9}{ms['p95']:>9}{ms['max']:>9}")
    worst = max(ms["p95"] for name, ms in result["open_ms"].items() if not name.endswith("_cpu"))
    print(f"target p95 < {TARGET_OPEN_MS:.0f} ms: {'ok' if worst < TARGET_OPEN_MS else 'MISSED'} (worst {worst} ms)")
    r = result["replay"]
    as_of_p95 = r["as_of_ms"]["p95"]
    print(f"replay: rebuild {r['rebuild_s']} s over {r['snapshots']} snapshots (once); as_of p95 {as_of_p95} ms")
    c = result["cpu_core_fraction"]
    dash = c["dashboard"] - c["feed_only"]
    focused = c["dashboard_log_focused"] - c["feed_only"]
    print(
        f"cpu at 4 Hz: feed {c['feed_only']:.1%}, with dashboard {c['dashboard']:.1%} (dashboard {dash:.1%}), "
        f"log focused {c['dashboard_log_focused']:.1%} (dashboard {focused:.1%}) of a core"
    )
    print(f"target dashboard < {TARGET_CPU:.0%}: {'ok' if max(dash, focused) < TARGET_CPU else 'MISSED'}")
    result["dashboard_cpu"] = {"unfocused": round(dash, 4), "log_focused": round(focused, 4)}
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
