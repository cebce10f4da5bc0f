"""A TCP proxy that injects network faults between a client and Redis, for tests.

``FaultProxy(host, port)`` listens on 127.0.0.1 on a free port and forwards every connection
to the target, one thread per connection pair (stdlib only). Faults switch at runtime, from
any thread:

- ``latency(seconds)``: each forwarded chunk waits that long first (both directions).
- ``reset_after_answer(probability, rng_seed)``: a client's request goes through and Redis
  answers, then with that probability the answer is dropped and the client's connection is
  reset (RST): the command took effect, the client never learns it. The first chunk read
  from the server after a client chunk counts as "the answer" (redis-py sends a pipeline as
  one chunk, so this is close enough for RESP).
- ``blackhole()``: nothing is forwarded any more in either direction and nothing is closed:
  bytes sent meanwhile are read and dropped, as a partition drops packets, so a client
  waiting for an answer hangs until its socket timeout. New connections are accepted and
  are just as silent. (TCP's late delivery of a request after the partition heals is not
  modelled: what went into the hole never comes out.)
- ``drop_all()``: every connection is reset, and new ones are reset as soon as they are
  accepted, until ``heal()``.
- ``heal()``: normal forwarding again (no latency, no drops).
- ``arm(pattern, fault)``: ``blackhole`` or ``drop_all`` the moment a request containing
  ``pattern`` (a script's SHA, say) has been forwarded: that command runs, its answer is
  lost in the outage that follows. Aims an outage at one step instead of a random moment.

Counters: ``accepted`` (connections), ``answers_dropped``, ``resets`` (client connections
reset for any reason), ``requests`` (client chunks forwarded).
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import threading
import time
from typing import Any
from urllib.parse import urlencode

_CHUNK = 65536
_TICK_S = 0.05  # how often an idle pair thread looks at its flags

NORMAL = "normal"
RESET = "reset_after_answer"
BLACKHOLE = "blackhole"
DROP_ALL = "drop_all"


def _reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN: the peer's next read fails at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class _Pair:
    """One client connection and its connection to the target."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.doomed: str | None = None  # "reset" or "close": the pair thread ends it
        self.done = threading.Event()


class FaultProxy:
    """A fault-injecting TCP proxy on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._lock = threading.Lock()
        self._mode = NORMAL
        self._latency_s = 0.0
        self._probability = 0.0
        self._drops_left: int | None = None
        self._skip_left = 0
        self._armed: tuple[bytes, str] | None = None
        self._rng = random.Random(0)
        self._pairs: set[_Pair] = set()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self.accepted = 0
        self.answers_dropped = 0
        self.resets = 0
        self.requests = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True
        )
        self._acceptor.start()

    # -- configuration ----------------------------------------------------------------------

    def url(self, db: int = 0, **params: Any) -> str:
        """``redis://127.0.0.1:<port>/<db>``; keyword arguments become the query string
        (``socket_timeout=2``)."""
        query = f"?{urlencode(params)}" if params else ""
        return f"redis://{self.host}:{self.port}/{db}{query}"

    @property
    def mode(self) -> str:
        with self._lock:
            return self._mode

    def latency(self, seconds: float) -> None:
        """Delay every forwarded chunk by ``seconds`` (on top of the current mode)."""
        with self._lock:
            self._latency_s = max(float(seconds), 0.0)

    def reset_after_answer(
        self, probability: float, rng_seed: int = 0, *, limit: int | None = None, skip: int = 0
    ) -> None:
        """Drop an answer and reset its client connection with ``probability``; with
        ``limit``, only that many times, then forward normally again. The first ``skip``
        answers go through whatever the dice say (to aim at the n-th request)."""
        with self._lock:
            self._mode = RESET
            self._probability = float(probability)
            self._rng = random.Random(rng_seed)
            self._drops_left = limit
            self._skip_left = skip

    def blackhole(self) -> None:
        """Stop forwarding in both directions, closing nothing."""
        with self._lock:
            self._mode = BLACKHOLE

    def drop_all(self) -> None:
        """Reset every connection now and every new one until ``heal()``."""
        with self._lock:
            self._mode = DROP_ALL
            pairs = list(self._pairs)
            for pair in pairs:
                pair.doomed = pair.doomed or "reset"
        self._wait_ended(pairs)

    def arm(self, pattern: bytes, fault: str) -> None:
        """Switch to ``fault`` (``"blackhole"`` or ``"drop_all"``) right after forwarding the
        next request that contains ``pattern``; ``heal()`` ends it as usual."""
        if fault not in (BLACKHOLE, DROP_ALL):
            raise ValueError(f"cannot arm {fault!r}: blackhole or drop_all")
        with self._lock:
            self._armed = (pattern, fault)

    @property
    def armed(self) -> bool:
        """True until the armed fault has gone off."""
        with self._lock:
            return self._armed is not None

    def heal(self) -> None:
        """Back to normal forwarding: no latency, no drops."""
        with self._lock:
            self._mode = NORMAL
            self._latency_s = 0.0
            self._probability = 0.0
            self._drops_left = None
            self._skip_left = 0

    def connections(self) -> int:
        """Connection pairs open now."""
        with self._lock:
            return len(self._pairs)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {
                "accepted": self.accepted,
                "requests": self.requests,
                "answers_dropped": self.answers_dropped,
                "resets": self.resets,
            }

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop accepting and close every connection (with a FIN)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._acceptor.join(5)
        _close(self._listener)
        with self._lock:
            pairs = list(self._pairs)
            for pair in pairs:
                pair.doomed = pair.doomed or "close"
        self._wait_ended(pairs)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wait_ended(self, pairs: list[_Pair], timeout_s: float = 5.0) -> None:
        # A pair thread may sit in a latency sleep or a blocking send: bounded, not forever.
        deadline = time.monotonic() + timeout_s
        for pair in pairs:
            pair.done.wait(max(deadline - time.monotonic(), 0))

    # -- threads ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                readable, _, _ = select.select([self._listener], [], [], _TICK_S)
                if not readable:
                    continue
                client, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(_TICK_S)
                continue
            with self._lock:
                self.accepted += 1
                refuse = self._mode == DROP_ALL
                if refuse:
                    self.resets += 1
            if refuse:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                with self._lock:
                    self.resets += 1
                _reset(client)
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, server)
            thread = threading.Thread(
                target=self._pump, args=(pair,), name=f"faultproxy-{self.port}-pair", daemon=True
            )
            with self._lock:
                self._pairs.add(pair)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _pump(self, pair: _Pair) -> None:
        try:
            self._forward(pair)
        except OSError:
            _close(pair.client)
            _close(pair.server)
        finally:
            with self._lock:
                self._pairs.discard(pair)
            pair.done.set()

    def _forward(self, pair: _Pair) -> None:
        client, server = pair.client, pair.server
        awaiting_answer = False
        while True:
            if pair.doomed is not None:
                if pair.doomed == "reset":
                    with self._lock:
                        self.resets += 1
                    _reset(client)
                else:
                    _close(client)
                _close(server)
                return
            readable, _, _ = select.select([client, server], [], [], _TICK_S)
            for sock in readable:
                if pair.doomed is not None:
                    break
                data = sock.recv(_CHUNK)
                if not data:  # either side closed: so does the other
                    _close(client)
                    _close(server)
                    return
                from_client = sock is client
                with self._lock:
                    mode, delay_s = self._mode, self._latency_s
                    if mode in (BLACKHOLE, DROP_ALL):
                        continue  # dropped; DROP_ALL dooms the pair right after
                    drop = False
                    fire: str | None = None
                    if from_client:
                        self.requests += 1
                        if self._armed is not None and self._armed[0] in data:
                            fire = self._armed[1]
                            self._armed = None
                    elif awaiting_answer and mode == RESET and self._drops_left != 0:
                        if self._skip_left > 0:
                            self._skip_left -= 1
                        else:
                            drop = self._rng.random() < self._probability
                        if drop:
                            self.answers_dropped += 1
                            self.resets += 1
                            if self._drops_left is not None:
                                self._drops_left -= 1
                                if self._drops_left == 0:
                                    self._mode = NORMAL
                if drop:
                    _reset(client)
                    _close(server)
                    return
                awaiting_answer = from_client
                if delay_s > 0:
                    time.sleep(delay_s)
                (server if from_client else client).sendall(data)
                if fire is not None:  # before this pair reads the answer: it is lost
                    self._go_off(fire)

    def _go_off(self, fault: str) -> None:
        with self._lock:
            self._mode = fault
            if fault == DROP_ALL:
                for pair in self._pairs:
                    pair.doomed = pair.doomed or "reset"
