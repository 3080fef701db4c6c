"""Progress of a remote experiment drawn from its event stream: a bar of the rounds and one
of the current round's clients, redrawn in place on a terminal, one line per step otherwise
(a log file or a pipe)."""

from __future__ import annotations

from typing import Any, TextIO

from backend.client import Event

WIDTH = 24


def bar(done: int, total: int) -> str:
    filled = WIDTH * min(done, total) // total if total > 0 else 0
    return "[" + "#" * filled + "-" * (WIDTH - filled) + f"] {done}/{total}"


def _number(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


class Progress:
    """What ``fedmomentum follow`` prints, updated by each event of the stream."""

    def __init__(self, experiment: dict[str, Any], out: TextIO, live: bool) -> None:
        self.out, self.live = out, live
        self.total = int(experiment["total_rounds"])
        self.done = int(experiment["current_round"])
        self.scores = ""
        self.round: int | None = None
        self.clients: list[int] = []
        self.finished: set[int] = set()
        self.failed: set[int] = set()
        self.steps: dict[int, int] = {}
        self.drawn = 0  # lines of the live display now on screen

    def update(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if event.event == "round_started":
            self.round, self.clients = int(data["round"]), list(data.get("clients", []))
            self.finished, self.failed, self.steps = set(), set(), {}
            attempt = f" (attempt {data['attempt'] + 1})" if data.get("attempt") else ""
            self._log(f"round {self.round + 1}/{self.total} started{attempt}: clients "
                      f"{', '.join(map(str, self.clients))}")  # fmt: skip
        elif event.event == "client_progress":
            self.steps[int(data["client"])] = int(data["step"])
            self._draw()
        elif event.event == "client_finished" and data.get("round") == self.round:
            client, client_round = int(data["client"]), int(data["round"]) + 1
            (self.finished if data.get("ok") else self.failed).add(client)
            outcome = "done" if data.get("ok") else f"failed: {data.get('error')}"
            self._log(f"round {client_round}/{self.total}: client {client} {outcome}")
        elif event.event == "round_finished":
            self.done = max(self.done, int(data["round"]) + 1)
            self.scores = (
                f"accuracy {_number(data.get('accuracy'), 3)}  "
                f"eval_loss {_number(data.get('eval_loss'))}"
            )
            self._log(f"rounds {bar(self.done, self.total)}  {self.scores}")
        elif event.event == "status":
            error = f": {data['error']}" if data.get("error") else ""
            self._log(f"status: {data.get('status')}{error}")

    def lines(self) -> list[str]:
        """The live display: the rounds, then the clients of the round running."""
        out = [f"rounds   {bar(self.done, self.total)}  {self.scores}".rstrip()]
        if self.round is not None and self.done <= self.round:
            ended = len(self.finished | self.failed)
            steps = "  ".join(f"c{c}:{s}" for c, s in sorted(self.steps.items()))
            out.append(f"round {self.round + 1}  {bar(ended, len(self.clients))}  {steps}".rstrip())
        return out

    def _log(self, line: str) -> None:
        if self.live:
            self._draw()
        else:
            print(line, file=self.out, flush=True)

    def _draw(self) -> None:
        if not self.live:
            return
        up = f"\x1b[{self.drawn}F" if self.drawn else ""
        lines = self.lines()
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        if len(lines) < self.drawn:  # a line fewer than before: clear what is left of it
            gone = self.drawn - len(lines)
            self.out.write("\x1b[2K\n" * gone + f"\x1b[{gone}F")
        self.drawn = len(lines)
        self.out.flush()
