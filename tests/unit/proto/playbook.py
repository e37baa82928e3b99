"""A transcript test helper for the inspect core, after mitmproxy's `Playbook`.

    assert (
        Playbook(session)
        >> ClientData(b"PASV\\r\\n", 2)
        << CloseData()
        << SendBackend(b"EPSV\\r\\n")
        >> BackendData(b"229 ok (|||50001|)\\r\\n", 2)
        << ListenData(("10.0.0.5", 50001), "198.51.100.7")
    )

`>>` is an event, `<<` a command it must produce. Evaluating the playbook
runs the events in order; every command an event produces must be the next
one expected after it, and nothing more: an extra command fails the test as
surely as a missing one. The failure message is the whole transcript, with
what came instead. A playbook can be extended and evaluated again: only the
new events run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ftplb.proto.commands import Cmd
from ftplb.proto.events import Event
from ftplb.proto.session import InspectSession


@dataclass
class _Step:
    event: Event
    expected: list[Cmd] = field(default_factory=list)
    got: list[Cmd] | None = None


class Playbook:
    def __init__(self, session: InspectSession) -> None:
        self.session = session
        self.steps: list[_Step] = []
        self._done = 0

    def __rshift__(self, event: Event) -> Playbook:
        self.steps.append(_Step(event))
        return self

    def __lshift__(self, command: Cmd) -> Playbook:
        if not self.steps:
            raise ValueError("a command is expected of an event: start with >>")
        self.steps[-1].expected.append(command)
        return self

    def __bool__(self) -> bool:
        for step in self.steps[self._done :]:
            step.got = self.session.handle(step.event)
            self._done += 1
            if step.got != step.expected:
                raise AssertionError("the transcript differs:\n" + self.transcript())
        return True

    def transcript(self) -> str:
        lines = []
        for step in self.steps:
            lines.append(f">> {step.event!r}")
            if step.got is None:
                lines += [f"   << {c!r}   (not run)" for c in step.expected]
                continue
            for i in range(max(len(step.expected), len(step.got))):
                want = step.expected[i] if i < len(step.expected) else None
                got = step.got[i] if i < len(step.got) else None
                if want == got:
                    lines.append(f"   << {want!r}")
                else:
                    lines.append(f"   << {want!r}   INSTEAD GOT {got!r}")
        return "\n".join(lines)
