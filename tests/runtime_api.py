"""A Lambda Runtime API server for tests, driving AWS's own runtime interface client.

``RuntimeApiFunction`` runs ``python -m awslambdaric <handler>`` (the bootstrap of AWS's
Python base images) as the execution environment, against a Runtime API of its own on a
loopback port, and plays the Lambda service around it: each invocation gets a request id
and a deadline, the process is frozen with SIGSTOP once it has answered and come back for
the next event, and it is killed at the deadline if it has not answered (the next
invocation is then a cold start). ``actor_system.testing.LambdaHarness`` does the same with
a bootstrap of the project's own; this one checks the handler under the real client.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RuntimeApiFunction", "RuntimeApiServer"]

API = "/2018-06-01/runtime"
_RESULT = re.compile(rf"^{API}/invocation/(?P<id>[^/]+)/(?P<kind>response|error)$")

# The init phase (importing the handler) has a limit of its own, as on Lambda, and does not
# count against the first invocation's timeout.
INIT_TIMEOUT_S = 10.0
# How long a freeze (SIGSTOP) may take to show in /proc on a busy machine.
FREEZE_WAIT_S = 5.0
ACCOUNT = "000000000000"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"


@dataclass
class Invocation:
    """One event handed to the runtime, and what the runtime posted back for it."""

    request_id: str
    body: bytes
    deadline_ms: int
    function_arn: str
    trace_id: str
    outcome: str | None = None  # "response" or "error", once posted
    payload: bytes = b""
    content_type: str = ""
    received_at: float = 0.0  # epoch seconds when the whole post had been read
    headers: dict[str, str] = field(default_factory=dict)


class RuntimeApiServer:
    """The Runtime API of one execution environment: ``GET invocation/next`` is held open
    until an invocation is queued; the runtime posts the result to ``invocation/{id}/
    response`` or ``invocation/{id}/error``, and an init failure to ``init/error``. HTTP/1.1
    with keep-alive: the client (libcurl) reuses one connection for all of these."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.pending: Invocation | None = None
        self.invocations: dict[str, Invocation] = {}
        self.polling = 0  # ``next`` requests held open: the runtime is idle
        self.init_done = False  # the runtime asked for its first event
        self.init_error: dict[str, Any] | None = None
        self.closed = False
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.api = self
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    @property
    def address(self) -> str:
        """``host:port``, the value of ``AWS_LAMBDA_RUNTIME_API``."""
        host, port = self.httpd.server_address[:2]
        return f"{host!s}:{port}"

    def queue(self, invocation: Invocation) -> None:
        with self.cond:
            self.invocations[invocation.request_id] = invocation
            self.pending = invocation
            self.cond.notify_all()

    def wait(
        self, predicate: Callable[[], bool], deadline: float, proc: subprocess.Popen[bytes]
    ) -> bool:
        """Wait until ``predicate()`` holds (True), or the deadline passes or the process
        exits (then ``predicate()`` as it stands)."""
        with self.cond:
            while not predicate():
                left = deadline - time.time()
                if left <= 0 or proc.poll() is not None:
                    return bool(predicate())
                self.cond.wait(min(left, 0.05))
            return True

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a held ``next`` of a killed runtime must not hold up close()
    api: RuntimeApiServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as libcurl expects
    disable_nagle_algorithm = True  # headers and body go out without a delayed-ACK stall

    @property
    def api(self) -> RuntimeApiServer:
        server = self.server
        assert isinstance(server, _Server)
        return server.api

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the function's own output is what the tests read."""

    def do_GET(self) -> None:
        if self.path != f"{API}/invocation/next":
            self._send(404, {"errorType": "NotFound", "errorMessage": self.path})
            return
        api = self.api
        with api.cond:
            api.init_done = True
            api.polling += 1
            api.cond.notify_all()
            while api.pending is None and not api.closed:
                api.cond.wait()
            api.polling -= 1
            invocation = api.pending
            api.pending = None
            api.cond.notify_all()
        if invocation is None:  # the environment is being discarded
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Lambda-Runtime-Aws-Request-Id", invocation.request_id)
        self.send_header("Lambda-Runtime-Deadline-Ms", str(invocation.deadline_ms))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", invocation.function_arn)
        self.send_header("Lambda-Runtime-Trace-Id", invocation.trace_id)
        self.send_header("Content-Length", str(len(invocation.body)))
        self.end_headers()
        self.wfile.write(invocation.body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        api = self.api
        if self.path == f"{API}/init/error":
            with api.cond:
                if api.init_done:
                    self._send(403, {"errorType": "InvalidStateTransition"})
                    return
                api.init_error = _init_error(body, self.headers.get(ERROR_TYPE_HEADER))
                api.cond.notify_all()
            self._send(202, {"status": "OK"})
            return
        match = _RESULT.match(self.path)
        if match is None:
            self._send(404, {"errorType": "NotFound", "errorMessage": self.path})
            return
        with api.cond:
            invocation = api.invocations.get(match["id"])
            if invocation is None:
                self._send(400, {"errorType": "InvalidRequestID"})
                return
            if invocation.outcome is not None:
                self._send(403, {"errorType": "InvalidStateTransition"})
                return
            invocation.outcome = match["kind"]
            invocation.payload = body
            invocation.content_type = self.headers.get("Content-Type", "")
            invocation.headers = dict(self.headers.items())
            invocation.received_at = time.time()
            api.cond.notify_all()
        self._send(202, {"status": "OK"})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _init_error(body: bytes, error_type: str | None) -> dict[str, Any]:
    """What the runtime reported (awslambdaric posts its error JSON without a content
    type, and the error type in a header too)."""
    try:
        error = json.loads(body)
    except ValueError:
        error = None
    if not isinstance(error, dict):
        error = {"errorMessage": body.decode("utf-8", "replace")}
    error.setdefault("errorType", error_type or "Runtime.Unknown")
    return error


@dataclass
class _Environment:
    api: RuntimeApiServer
    proc: subprocess.Popen[bytes]


class RuntimeApiFunction:
    """A Lambda function run by ``awslambdaric``: each cold start is a new process with a
    Runtime API of its own, frozen (SIGSTOP) between invocations and killed (SIGKILL) at
    its timeout. The interface mirrors ``LambdaHarness``: ``invoke``, ``cold_starts``,
    ``invocations``, ``close``.

    ``handler`` is awslambdaric's ``"module.attribute"``; ``env`` is the function's
    environment, over the variables Lambda sets (it may set ``AWS_LAMBDA_LOG_FORMAT`` and
    ``AWS_LAMBDA_LOG_LEVEL`` as a function's logging configuration does). The function's
    stdout and stderr, from every process it ran in, go to ``log_path``.
    """

    def __init__(
        self,
        handler: str,
        *,
        timeout_s: float,
        env: dict[str, str] | None = None,
        function_name: str = "drain",
        cwd: str | None = None,
        memory_mb: int = 512,
        execution_env: str = "AWS_Lambda_python3.12",
        log_path: str | None = None,
    ) -> None:
        self.handler = handler
        self.timeout_s = timeout_s
        self.function_name = function_name
        self.env = dict(env or {})
        self.region = (
            self.env.get("AWS_DEFAULT_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self.function_arn = f"arn:aws:lambda:{self.region}:{ACCOUNT}:function:{function_name}"
        self.cwd = cwd or os.getcwd()
        self.memory_mb = memory_mb
        # awslambdaric reads it: on the python3.12+ runtimes it polls ``next`` from a thread.
        self.execution_env = execution_env
        self._own_log = log_path is None
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix=f"lambda-{function_name}-", suffix=".log")
            os.close(fd)
        self.log_path = Path(log_path)
        self._env: _Environment | None = None
        self.cold_starts = 0
        self.invocations = 0
        self.request_ids: list[str] = []
        self._log_spans: dict[str, tuple[int, int]] = {}

    @property
    def pid(self) -> int | None:
        """The process of the current execution environment, if there is one."""
        return self._env.proc.pid if self._env is not None else None

    @property
    def last_request_id(self) -> str:
        return self.request_ids[-1]

    def invoke(self, event: Any) -> Any:
        """One invocation: the handler's result, the error awslambdaric reported for it, or
        Lambda's own error (``Sandbox.Timedout``, ``Runtime.ExitError``, an init error)."""
        self.invocations += 1
        request_id = str(uuid.uuid4())
        self.request_ids.append(request_id)
        environment = self._env
        if environment is None or environment.proc.poll() is not None:
            self._discard()
            before = self._log_size()
            failure = self._start(request_id)
            if failure is not None:
                self._log_spans[request_id] = (before, self._log_size())
                return failure
            environment = self._env
            assert environment is not None
        else:
            environment.proc.send_signal(signal.SIGCONT)  # thaw the environment
        api, proc = environment.api, environment.proc
        start = self._log_size()
        deadline = time.time() + self.timeout_s
        invocation = Invocation(
            request_id=request_id,
            body=json.dumps(event).encode(),
            deadline_ms=int(deadline * 1000),
            function_arn=self.function_arn,
            trace_id=f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0",
        )
        api.queue(invocation)
        api.wait(lambda: invocation.outcome is not None, deadline, proc)
        answered = invocation.outcome is not None and invocation.received_at <= deadline
        if not answered:
            code = proc.poll()
            self._discard()  # killed at its timeout, or gone: the environment is discarded
            self._log_spans[request_id] = (start, self._log_size())
            if code is not None:
                return _exit_error(request_id, code)
            return {
                "errorType": "Sandbox.Timedout",
                "errorMessage": f"Task timed out after {self.timeout_s:.2f} seconds",
                "requestId": request_id,
            }
        # The invocation ends when the runtime comes back for the next event; only then is
        # it frozen, so that it is never stopped halfway through posting its result.
        if api.wait(lambda: api.polling > 0, deadline, proc):
            self._freeze(proc)
        else:
            self._discard()
        self._log_spans[request_id] = (start, self._log_size())
        if invocation.content_type.startswith("application/json"):
            return json.loads(invocation.payload)
        return invocation.payload

    def logs(self, request_id: str | None = None) -> str:
        """The function's output: all of it, or what was written during one invocation."""
        data = self.log_path.read_bytes()
        if request_id is not None:
            start, end = self._log_spans[request_id]
            data = data[start:end]
        return data.decode("utf-8", "replace")

    def close(self) -> None:
        """Discard the execution environment (the log file goes too, unless it was given)."""
        self._discard()
        if self._own_log:
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()

    def __enter__(self) -> RuntimeApiFunction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self, request_id: str) -> dict[str, Any] | None:
        """Cold start: a Runtime API and an awslambdaric process; None once it asks for
        its first event, else the error Lambda returns for a failed init."""
        api = RuntimeApiServer()
        stream = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{uuid.uuid4().hex}"
        env = {
            **os.environ,
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "AWS_LAMBDA_FUNCTION_NAME": self.function_name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(self.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{self.function_name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_EXECUTION_ENV": self.execution_env,
            "AWS_REGION": self.region,
            "LAMBDA_TASK_ROOT": self.cwd,
            "_HANDLER": self.handler,
            "TZ": ":UTC",
            **self.env,
        }
        with self.log_path.open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "awslambdaric", self.handler],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
            )
        self._env = _Environment(api, proc)
        self.cold_starts += 1
        api.wait(
            lambda: api.init_done or api.init_error is not None,
            time.time() + INIT_TIMEOUT_S,
            proc,
        )
        if api.init_done:
            return None
        init_error, code = api.init_error, proc.poll()
        self._discard()
        if init_error is not None:
            return {**init_error, "requestId": request_id}
        if code is not None:
            return _exit_error(request_id, code)
        return {
            "errorType": "Sandbox.Timedout",
            "errorMessage": f"Init timed out after {INIT_TIMEOUT_S:.2f} seconds",
            "requestId": request_id,
        }

    def _freeze(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGSTOP, and wait until the kernel shows every thread of the process stopped, so
        that nothing of it runs once invoke() has returned."""
        proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + FREEZE_WAIT_S
        while not _stopped(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.001)

    def _discard(self) -> None:
        environment, self._env = self._env, None
        if environment is None:
            return
        if environment.proc.poll() is None:
            environment.proc.kill()  # SIGKILL stops a frozen process too
        environment.proc.wait(10)
        environment.api.close()

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0


def _stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (True too without /proc, or once gone)."""
    for path in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            state = path.read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue  # that thread is gone
        if state not in ("T", "t"):
            return False
    return True


def _exit_error(request_id: str, code: int) -> dict[str, Any]:
    cause = f"signal: {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    return {
        "errorType": "Runtime.ExitError",
        "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: {cause}",
        "requestId": request_id,
    }
