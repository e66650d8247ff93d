"""Which policy Tamiyo follows (`--policy heuristic|learned|FILE`), loaded between epochs, verified, or refused.

`learned` follows the version Simic published in the library (the signed pointer, library/policies.py); the
pointer is read again at most every `reload_s` (between epochs: `ready` is asked before each epoch's decisions),
so a newly published version takes over without a restart. `FILE` is one signed policy file, read once. The
operator may choose again while training runs (SetPolicy, the palette): the choice lands in a `PolicyBox` and is
taken before the next epoch's decisions. Anything that fails (no policy published yet, a bad signature, another
task's policy, a weight of the wrong shape) leaves the heuristic in charge and says so: one PolicyChanged event
(the banner's and the snapshot's `training.policy`, its line in the event log), each time what Tamiyo follows or
why changes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from esper_tui.engine import fsutil
from esper_tui.engine.contracts import AnyEvent, PolicyChanged, SeedHealth
from esper_tui.engine.library.policies import Policies
from esper_tui.engine.library.policy_file import PolicyInvalid, decode
from esper_tui.engine.training.controller import Controller, Decision, EpochState
from esper_tui.engine.training.kernel_source import KernelOffer
from esper_tui.engine.training.learned import HISTORY, LinearPolicy, from_file
from esper_tui.engine.vocabulary import Action, Subsystem

HEURISTIC = "heuristic"
LEARNED = "learned"


class PolicyBox:
    """The operator's latest choice: set by the training process's control thread (SetPolicy), read by the follower
    between epochs."""

    def __init__(self, spec: str) -> None:
        self._spec = spec
        self._lock = threading.Lock()

    def set(self, spec: str) -> None:
        with self._lock:
            self._spec = spec

    def get(self) -> str:
        with self._lock:
            return self._spec


def policy_label(version: str | None) -> str:
    """What the banner and `training.policy` show: "heuristic" or "learned v0003"."""
    return HEURISTIC if version is None else f"{LEARNED} {version}"


class PolicyFollower:
    """The controller's PolicyHook in the training process: the chosen learned policy, or the heuristic."""

    def __init__(
        self,
        spec: str | PolicyBox,
        *,
        key: bytes,
        task: str,
        emit: Callable[[AnyEvent], None],
        policies: Callable[[], Policies] | None = None,
        reload_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.box = spec if isinstance(spec, PolicyBox) else PolicyBox(spec)
        self.spec = self.box.get()
        self._key = key
        self.task = task
        self.emit = emit
        self._policies = policies
        self.reload_s = reload_s
        self.clock = clock
        self.current: LinearPolicy | None = None
        self.history: deque[float] = deque(maxlen=HISTORY)
        self._checked = -float("inf")
        self._said: tuple[str, str] | None = None
        self._store: Policies | None = None

    @property
    def label(self) -> str:
        return policy_label(self.current.version if self.current is not None else None)

    def _say(self, reason: str, *, fallback: bool) -> None:
        said = (self.label, reason)
        if said == self._said:
            return
        self._said = said
        self.emit(PolicyChanged(source=Subsystem.TAMIYO, policy=self.label, reason=reason, fallback=fallback))

    def _adopt(self, policy: LinearPolicy, where: str) -> None:
        if policy.version == (self.current.version if self.current else None):
            return
        policy.history = self.history
        self.current = policy
        self._say(f"{where}, signature verified", fallback=False)

    def _fall_back(self, reason: str) -> None:
        self.current = None
        self._say(f"{reason}; the heuristic decides", fallback=True)

    def refresh(self) -> None:
        """Load what the spec names if it changed; on any failure fall back to the heuristic, saying why."""
        try:
            if self.spec == HEURISTIC:
                if self._said is not None:  # chosen by the operator after something else: say so
                    self.current = None
                    self._say("chosen by the operator", fallback=False)
            elif self.spec == LEARNED:
                self._refresh_published()
            elif self.current is None:
                path = Path(self.spec)
                data = fsutil.read_regular(path, path.name)
                meta, tensors = decode(data, self._key, where=str(path))
                self._check_task(meta.task, meta.version)
                self._adopt(from_file(meta, tensors), f"policy file {path}")
        except PolicyInvalid as exc:
            self._fall_back(f"policy refused: {exc}")
        except (OSError, fsutil.NotRegularFile) as exc:
            self._fall_back(f"policy unreadable: {exc}")
        except Exception as exc:  # a library that fails in any other way must not stop training
            self._fall_back(f"policy unavailable: {type(exc).__name__}: {exc}")

    def _check_task(self, task: str, version: str) -> None:
        if task != self.task:
            raise PolicyInvalid(f"policy {version} was trained on task {task}, this run trains {self.task}")

    def _refresh_published(self) -> None:
        if self._policies is None:
            raise PolicyInvalid("no library to read published policies from")
        if self._store is None:  # opened once (a shared library's catalog connection is kept, not remade)
            self._store = self._policies()
        policies = self._store
        pointer = policies.published()
        if pointer is None:
            self.current = None
            self._say("no learned policy published yet; the heuristic decides", fallback=False)
            return
        if self.current is not None and self.current.version == pointer.version:
            return
        meta, tensors = policies.load(pointer.version)
        self._check_task(meta.task, meta.version)
        self._adopt(from_file(meta, tensors), f"published policy {meta.version}")

    # ------------------------------------------------------------------ PolicyHook

    def ready(self, state: EpochState) -> bool:
        now = self.clock()
        if (spec := self.box.get()) != self.spec:  # the operator chose another policy: take it now
            self.spec, self.current, self._checked = spec, None, -float("inf")
        if now - self._checked >= self.reload_s:
            self._checked = now
            self.refresh()
        self.history.append(state.val_metric)
        return self.current is not None

    def grow(self, controller: Controller, state: EpochState, options: list[tuple[KernelOffer, str]]) -> Decision:
        if self.current is None:
            return Decision(Action.WAIT, reason="no learned policy")
        return self.current.grow(controller, state, options)

    def judge(self, controller: Controller, state: EpochState, seed: SeedHealth) -> Decision | None:
        return None if self.current is None else self.current.judge(controller, state, seed)
