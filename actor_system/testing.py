"""Helpers for testing actors: the manual clock, and a Lambda harness that runs a handler
in a child process frozen between invocations, as AWS Lambda does."""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

from actor_system.clock import ManualClock

if TYPE_CHECKING:
    from actor_system.runtime import DrainReport
    from actor_system.system import ActorSystem

__all__ = ["LambdaContext", "LambdaHarness", "ManualClock", "advance_and_drain", "settle"]


def advance_and_drain(system: ActorSystem, clock: ManualClock, seconds: float) -> DrainReport:
    """Move the clock forward and deliver everything that fell due, without sleeping."""
    clock.advance(seconds)
    return system.run_until_idle()


def settle(system: ActorSystem, clock: ManualClock, *, within_s: float = 3600.0) -> DrainReport:
    """Drain, stepping the clock to each next due time (deferred messages, retries waiting
    out their backoff), until nothing is due within ``within_s`` of the start; returns the
    sum of what was done. Retries run their whole course without sleeping."""
    from actor_system.runtime import DrainReport

    report = DrainReport()
    until_ms = (clock.now() + within_s) * 1000
    while True:
        report.add(system.run_until_idle())
        due_ms = system.backend.next_due_ms()
        if due_ms is None or due_ms > until_ms:
            return report
        clock.set(max(clock.now(), due_ms / 1000))


INIT_TIMEOUT_S = 10.0


class LambdaContext:
    """The context object Lambda passes to a handler, with a real deadline."""

    def __init__(
        self, deadline_s: float, request_id: str, function_name: str, memory_mb: int = 512
    ) -> None:
        self._deadline_s = deadline_s
        self.aws_request_id = request_id
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = memory_mb
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}"
        )
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"

    def get_remaining_time_in_millis(self) -> int:
        return max(int((self._deadline_s - time.time()) * 1000), 0)


class LambdaHarness:
    """Runs a handler the way Lambda does: in a child process (the execution environment),
    with a real deadline per invocation, frozen with SIGSTOP between invocations and killed
    at its timeout (the next invocation is then a cold start).

    ``handler`` is ``"module:attribute"``; ``env`` is the function's environment;
    ``python_args`` go to the interpreter (``("-S",)`` with ``PYTHONPATH`` set to an unzipped
    package runs the handler with only what the package holds).
    """

    def __init__(
        self,
        handler: str,
        *,
        timeout_s: float,
        env: dict[str, str] | None = None,
        function_name: str = "drain",
        cwd: str | None = None,
        python_args: tuple[str, ...] = (),
    ) -> None:
        self.handler = handler
        self.timeout_s = timeout_s
        self.python_args = python_args  # e.g. ("-S",) to import only from PYTHONPATH
        self.env = {**os.environ, **(env or {}), "AWS_LAMBDA_FUNCTION_NAME": function_name}
        self.function_name = function_name
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self._reply: int | None = None
        self.cold_starts = 0
        self.invocations = 0

    def _start(self) -> subprocess.Popen[bytes]:
        read_fd, write_fd = os.pipe()
        proc = subprocess.Popen(
            [
                sys.executable,
                *self.python_args,
                "-m",
                "actor_system.testing",
                self.handler,
                str(write_fd),
            ],
            stdin=subprocess.PIPE,
            pass_fds=(write_fd,),
            env=self.env,
            cwd=self.cwd,
        )
        os.close(write_fd)
        self._reply = read_fd
        self.cold_starts += 1
        # The init phase (importing the handler) has its own limit, as on Lambda, and does
        # not count against the first invocation's timeout.
        if self._read_line(time.time() + INIT_TIMEOUT_S) != b"ready\n":
            proc.kill()
            proc.wait(10)
            if proc.stdin is not None:
                proc.stdin.close()
            os.close(read_fd)
            self._reply = None
            raise RuntimeError(f"handler {self.handler!r} failed to initialise")
        return proc

    def invoke(self, event: Any) -> Any:
        """One invocation; the handler's result, or Lambda's timeout error."""
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self.proc = self._start()
        else:
            self.proc.send_signal(signal.SIGCONT)  # thaw the environment
        self.invocations += 1
        deadline = time.time() + self.timeout_s
        request = {
            "event": event,
            "deadline": deadline,
            "request_id": uuid.uuid4().hex,
            "function_name": self.function_name,
        }
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        line = self._read_line(deadline)
        if line is None:
            self.close()  # "Task timed out": the environment is discarded
            return {
                "errorType": "Sandbox.Timedout",
                "errorMessage": f"Task timed out after {self.timeout_s:.2f} seconds",
            }
        self.proc.send_signal(signal.SIGSTOP)  # frozen until the next invocation
        return json.loads(line)

    def _read_line(self, deadline: float) -> bytes | None:
        assert self._reply is not None
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.time()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._reply], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._reply, 65536)
            if not chunk:
                return None
            buf += chunk
        return buf

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
                self.proc.wait(10)
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        if self._reply is not None:
            os.close(self._reply)
            self._reply = None
        self.proc = None

    def __enter__(self) -> LambdaHarness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _child(spec: str, reply_fd: int) -> None:
    """The execution environment: import the handler once (cold start), then serve
    invocations read from stdin, answering on ``reply_fd``."""
    module_name, _, attr = spec.partition(":")
    sys.path.insert(0, os.getcwd())
    handler = getattr(importlib.import_module(module_name), attr)
    reply = os.fdopen(reply_fd, "wb", buffering=0)
    reply.write(b"ready\n")
    for line in sys.stdin.buffer:
        request = json.loads(line)
        context = LambdaContext(
            request["deadline"], request["request_id"], request["function_name"]
        )
        try:
            result = handler(request["event"], context)
        except Exception as e:  # Lambda reports the error and keeps the environment
            result = {"errorType": type(e).__name__, "errorMessage": str(e)}
        reply.write(json.dumps(result, default=str).encode() + b"\n")


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))
