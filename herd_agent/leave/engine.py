"""The step engine: journal, failpoints, deadline, resume. It knows nothing of what a step does.

For each step of the sequence (:data:`herd_agent.leave.steps.STEPS`):

- a step already ``done``, ``failed`` or ``skipped`` in the journal is not run again (resume);
- one whose ``skip(ctx)`` gives a reason is journaled ``skipped`` with it;
- within :data:`COMPLETE_MARGIN_S` of the deadline, every step but the last is journaled
  ``skipped`` (the time belongs to completing the lifecycle action);
- otherwise: journal ``started`` (start count + 1), ``run(ctx)``, journal ``done`` with its detail
  (or ``skipped`` when the detail says so), or ``failed`` with the error text (redacted when the
  journal is written); a failure never stops the sequence, the last step runs in a ``finally``.

Failpoints (:mod:`herd_agent.failpoints`) ``<step>:before``, ``:started``, ``:acted`` (the step
acted, the journal still says ``started``) and ``:after`` let a test kill the process anywhere.
In plan mode the engine journals nothing and collects each step's ``describe(ctx)`` instead.
"""

from __future__ import annotations

import logging

from herd_agent.failpoints import failpoint
from herd_agent.leave.context import LeaveContext
from herd_agent.leave.steps import Step
from herd_agent.logs import step as log_step

log = logging.getLogger(__name__)

COMPLETE_MARGIN_S = 5.0
FINAL = ("done", "failed", "skipped")


class StepEngine:
    """Run ``steps`` over ``ctx``; the last step always runs, even after a failure or an exception."""

    def __init__(self, ctx: LeaveContext, steps: tuple[Step, ...]) -> None:
        self.ctx = ctx
        self.steps = tuple(s for s in steps if s.applies(ctx))

    def plan(self) -> list[tuple[str, str]]:
        """``(name, what it would do)`` for each step that would run here (plan mode: no journal)."""
        out = []
        for s in self.steps:
            reason = s.skip(self.ctx)
            out.append((s.name, reason if reason else s.describe(self.ctx)))
        return out

    def run(self) -> None:
        """Run (or resume) every step in order, the last one in a ``finally``."""
        *body, last = self.steps
        try:
            for s in body:
                self.run_step(s)
        finally:
            self.run_step(last, final=True)

    def run_step(self, s: Step, *, final: bool = False) -> None:
        """Run one step under the journal (see the module docstring)."""
        ctx, state = self.ctx, self.ctx.journal.steps[s.name]
        if state.status in FINAL:
            return
        failpoint(f"{s.name}:before")
        reason = s.skip(ctx)
        deadline = ctx.journal.deadline
        if reason is None and not final and deadline is not None and ctx.clock() > deadline - COMPLETE_MARGIN_S:
            reason = "skipped: deadline reached; completing the lifecycle action instead"
        if reason is not None:
            state.status, state.detail = "skipped", reason
            ctx.save()
            return
        state.status, state.starts, state.started_at = "started", state.starts + 1, ctx.clock()
        ctx.save()
        failpoint(f"{s.name}:started")
        with log_step(s.name):
            try:
                detail = s.run(ctx)
                failpoint(f"{s.name}:acted")
                state.status = "skipped" if detail.startswith("skipped") else "done"
                state.detail = detail
            except Exception as exc:
                state.status, state.detail = "failed", f"{type(exc).__name__}: {exc}"
                ctx.failed.append(s.name)
                log.error("leave step %s failed: %s", s.name, exc)
        state.finished_at = ctx.clock()
        ctx.save()
        failpoint(f"{s.name}:after")
