"""`runyard submit` saying why its run waits: once per reason, never after the run left the queue or was stopped."""

from __future__ import annotations

import threading

from protos import runyard_pb2 as pb
from runyard.errors import Unavailable
from runyard.submit import QueueWatch


class Runs:
    """Answers GetRun from a script of runs; the last one repeats."""

    def __init__(self, *answers: pb.Run | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def get_run(self, run_id: str) -> pb.Run:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def queued(reason: str) -> pb.Run:
    return pb.Run(id="r1", state=pb.RUN_STATE_QUEUED, pending_reason=reason)


def test_each_reason_is_said_once_and_the_watch_ends_when_the_run_leaves_the_queue() -> None:
    runs = Runs(queued(""), queued("a"), queued("a"), queued("b"), queued("b"), queued("a"),
                pb.Run(id="r1", state=pb.RUN_STATE_PREPARING))
    said: list[str] = []
    QueueWatch(runs, "r1", said.append, first_look_s=0.001, max_look_s=0.002).start().join()
    assert said == ["queued: a", "queued: b", "queued: a"]
    assert runs.calls == 7


def test_a_run_that_starts_at_once_costs_no_call() -> None:
    runs = Runs(queued("a"))
    said: list[str] = []
    watch = QueueWatch(runs, "r1", said.append).start()
    watch.stop()  # the first log line, well before the first look
    watch.join()
    assert runs.calls == 0 and said == []


def test_an_unreachable_head_ends_the_watch_quietly() -> None:
    said: list[str] = []
    runs = Runs(Unavailable("cannot reach the head"))
    QueueWatch(runs, "r1", said.append, first_look_s=0.001).start().join()
    assert runs.calls == 1 and said == []


def test_nothing_is_said_once_stop_returned_even_with_a_look_in_flight() -> None:
    asked, answer = threading.Event(), threading.Event()

    class Slow:
        def get_run(self, run_id: str) -> pb.Run:
            asked.set()
            answer.wait()
            return queued("a")

    said: list[str] = []
    watch = QueueWatch(Slow(), "r1", said.append, first_look_s=0.001).start()
    assert asked.wait(timeout=10)
    watch.stop()
    answer.set()
    watch.join()
    assert said == []
