"""Test-only fault hook: die with SIGKILL at a named point, to prove crash recovery.

The reliability tests (``tests/reliability/test_crash_recovery.py``) start a service process with
``VIPPS_POS_CRASH_AT=<point>`` and check that, after a restart, every checkout still reaches its
right final state and Vipps sees no duplicate effect. The variable is read once, at import; when
it is unset — always, outside those tests — :func:`crash_point` is a single comparison with
``None``.

A point may be armed for one detail only, ``<point>:<detail>`` (e.g.
``outbox.after_call:CAPTURE``), or for every detail, ``<point>``.

Named points (each is where the atomic-phase design, DESIGN.md §3, must repair a crash):

* ``outbox.before_call`` — the command's claim has committed, the Vipps call has not been made;
* ``outbox.after_call`` — Vipps has answered (the effect exists at Vipps), nothing is recorded;
* ``webhook.after_inbox_commit`` — a webhook is stored in the inbox, not yet answered or
  processed;
* ``capture.after_commit`` — a POS capture request committed its outbox row, the till has no
  answer yet.
"""

from __future__ import annotations

import os
import signal

CRASH_AT_VARIABLE = "VIPPS_POS_CRASH_AT"
_ARMED: str | None = os.environ.get(CRASH_AT_VARIABLE) or None


def crash_point(name: str, detail: str | None = None) -> None:
    """Kill this process with SIGKILL if ``VIPPS_POS_CRASH_AT`` names this point."""
    # Armed only in the processes the crash tests kill with SIGKILL, which write no coverage data.
    if _ARMED is not None and (  # pragma: no cover (armed only where the crash tests SIGKILL)
        name == _ARMED or (detail is not None and f"{name}:{detail}" == _ARMED)
    ):
        os.kill(os.getpid(), signal.SIGKILL)
