"""Actor state in S3: one object per actor, written with conditional PUTs.

The object ``<prefix>/<type>/<id>`` is a msgpack map: the state bytes, a version, and the
commits of the last ``replay_window`` seconds, each with its version, its time, the ids of the
messages it processed and the messages (and cancels) it sent. The first write is
``If-None-Match: *``, later ones ``If-Match: <etag>``: a ``412`` means another holder committed
since we read, so our batch is abandoned, never a lost update.

Why the commits are kept: Redis acknowledges a commit (delivers its outbox, stores the S3
version in the actor's state) after S3 has taken it. If the writer dies in between, or Redis
later loses acknowledged writes (a failover to a lagging replica, AOF ``everysec``, a restore,
a flush) or the acknowledgement expires, the object is ahead of what Redis knows. The next
holder then drops the messages those commits processed and sends again what they sent within
the window: receivers drop the ids they processed, so nothing is lost and nothing applies
twice. Outboxes are kept for one window and ids for two, so that a copy sent again at the end
of the window and waiting in a mailbox is still recognised by its receiver.

``s3://bucket/prefix?replay_window=60`` (seconds, 60 by default) should cover the longest
Redis outage to recover from plus ``lease_ms`` (a restored lease must expire before its actor
runs again): a commit older than the window is never sent again (its receivers may have
forgotten its ids), except the last one when the dead holder's messages come back from its
in-flight list (Redis never had that commit, so nobody received its sends). The object grows
with what the actor sent in one window and processed in two: each message sent costs its
encoded size plus about 60 bytes, each message processed 17 bytes.

Format version 1 (the last commit's outbox and the last 200 ids) is still read, as one commit
dated by the object's ``LastModified``; the next write turns it into version 2.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import msgpack

from actor_system.adapters.aws import as_aws_error, aws_call, aws_client, error_code, url_number
from actor_system.envelope import ID_LENGTH, Outgoing
from actor_system.errors import ConfigError, DecodeError

if TYPE_CHECKING:
    from collections.abc import Iterator

FORMAT_VERSION = 2
REPLAY_WINDOW_S = 60.0
# S3 answers a conditional PUT that lost with 412; one racing another in flight may get 409.
_LOST_RACE = frozenset(("PreconditionFailed", "ConditionalRequestConflict"))
_HEX = frozenset("0123456789abcdef")

log = logging.getLogger("actor_system")


class WriteConflict(Exception):
    """A conditional PUT lost: another holder wrote the object since we read it."""


@dataclass(slots=True)
class Retained:
    """One commit as the object keeps it: its outbox and replies for one window, its ids for
    two."""

    version: int
    at_ms: int  # when it was committed, by the runtime's clock (Redis TIME on redis://)
    done: list[str]  # ids of the messages it processed
    outbox: list[Outgoing] = field(default_factory=list)  # everything its Redis commit sent
    cancels: list[str] = field(default_factory=list)
    replies: list[tuple[str, bytes]] = field(default_factory=list)  # (message id, record)

    def pack(self) -> list[Any]:
        outbox = [[o.target, o.id, o.due_ms, o.entry] for o in self.outbox]
        return [self.version, self.at_ms, len(self.done), outbox, self.cancels]

    @classmethod
    def unpack(cls, row: list[Any], done: list[str]) -> Retained:
        version, at_ms, _, outbox, cancels = row
        sent = [Outgoing(str(o[1]), str(o[0]), bytes(o[3]), o[2]) for o in outbox]
        return cls(int(version), int(at_ms), done, sent, [str(c) for c in cancels])


@dataclass(slots=True)
class StateObject:
    """What one actor's S3 object holds, and the ETag it was read with (None: absent)."""

    state: bytes | None = None
    version: int = 0
    commits: list[Retained] = field(default_factory=list)  # oldest first
    etag: str | None = None

    @property
    def done(self) -> list[str]:
        """The ids every retained commit processed, oldest first."""
        return [i for c in self.commits for i in c.done]

    @property
    def outbox(self) -> list[Outgoing]:
        """What the last commit sent."""
        return self.commits[-1].outbox if self.commits else []

    def successor(self, state: bytes | None, commit: Retained, window_ms: int) -> StateObject:
        """The next version (``state`` None: a tombstone, the actor ended): ``commit``
        appended; older commits keep their outbox for one window (counted back from
        ``commit``) and their ids for two."""
        kept = []
        for c in self.commits:
            age = commit.at_ms - c.at_ms
            if age <= window_ms:
                kept.append(c)
            elif age <= 2 * window_ms:
                kept.append(Retained(c.version, c.at_ms, c.done))
        return StateObject(state, commit.version, [*kept, commit])

    def encode(self) -> bytes:
        # "done" holds the ids of all commits in order (each row says how many are its own):
        # ids stay one flat list of 16-byte strings, readable by other tools as before.
        return bytes(
            msgpack.packb(
                {
                    "f": FORMAT_VERSION,
                    "version": self.version,
                    "state": self.state,
                    "done": [_pack_id(i) for i in self.done],
                    "commits": [c.pack() for c in self.commits],
                    # Beside the commit rows, not in them: a deploy that predates replies
                    # reads the rows as before and ignores this key.
                    "replies": {
                        str(c.version): [[i, r] for i, r in c.replies]
                        for c in self.commits
                        if c.replies
                    },
                },
                use_bin_type=True,
            )
        )

    @classmethod
    def decode(cls, raw: bytes, etag: str, where: str, modified_ms: int) -> StateObject:
        """Decode either format; ``modified_ms`` (LastModified) dates a version-1 commit."""
        try:
            m = msgpack.unpackb(raw, raw=False)
            if not isinstance(m, dict) or m.get("f") not in (1, FORMAT_VERSION):
                raise ValueError(f"not a state object of format version 1 or {FORMAT_VERSION}")
            done = [_unpack_id(i) for i in m["done"]]
            if m["f"] == 1:  # the last commit's outbox, the ids of the last few commits
                rows = [[m["version"], modified_ms, len(done), m["outbox"], m["cancels"]]]
            else:
                rows = m["commits"]
            commits = _split(rows, done)
            kept = m.get("replies") or {}
            for c in commits:
                c.replies = [(str(i), bytes(r)) for i, r in kept.get(str(c.version), [])]
            return cls(m["state"], int(m["version"]), commits, etag)
        except Exception as e:
            raise DecodeError(f"S3 object {where} is not a valid state object: {e}", raw) from e


def _split(rows: list[list[Any]], done: list[str]) -> list[Retained]:
    """Each commit row with its own slice of the flat id list."""
    commits = []
    start = 0
    for row in rows:
        end = start + int(row[2])
        commits.append(Retained.unpack(row, done[start:end]))
        start = end
    if start != len(done):
        raise ValueError(f"{len(done)} ids, the commits account for {start}")
    return commits


def _pack_id(message_id: str) -> bytes | str:
    """16 bytes for a lowercase hex id (every id the runtime makes); any other id as it is,
    so that it reads back unchanged."""
    if len(message_id) == ID_LENGTH and set(message_id) <= _HEX:
        return bytes.fromhex(message_id)
    return message_id


def _unpack_id(raw: Any) -> str:
    return raw.hex() if isinstance(raw, bytes) else str(raw)


def _window(url: str) -> float:
    query = dict(parse_qsl(urlsplit(url).query))
    unknown = set(query) - {"replay_window"}
    if unknown:
        raise ConfigError(f"unknown parameter(s) {', '.join(sorted(unknown))} in {url!r}")
    return url_number(url, query, "replay_window", REPLAY_WINDOW_S, positive=True)


class S3StateStore:
    """Reads and conditionally writes actor state objects under ``s3://bucket/prefix``."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        client: Any = None,
        replay_window_s: float = REPLAY_WINDOW_S,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client
        self.window_ms = int(replay_window_s * 1000)

    @classmethod
    def from_url(cls, url: str) -> S3StateStore:
        """``s3://bucket[/prefix][?replay_window=60]`` (seconds)."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"state URL {url!r} is not s3://bucket[/prefix][?replay_window=]")
        return cls(bucket=parts.netloc, prefix=parts.path, replay_window_s=_window(url))

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws_client("s3", max_pool_connections=32)
        return self._client

    def key(self, actor: str) -> str:
        """``prefix/type/id``: readable in the console, one object per actor."""
        return f"{self.prefix}/{actor}" if self.prefix else actor

    def where(self, actor: str) -> str:
        return f"s3://{self.bucket}/{self.key(actor)}"

    def read(self, actor: str) -> StateObject:
        """The actor's object, or an empty one (etag None) if it was never written."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key(actor))
            raw = got["Body"].read()
        except (ClientError, BotoCoreError) as e:
            if error_code(e) in ("NoSuchKey", "404"):
                return StateObject()
            raise as_aws_error("GetObject", self.where(actor), e) from e
        modified_ms = int(got["LastModified"].timestamp() * 1000)
        return StateObject.decode(raw, got["ETag"], self.where(actor), modified_ms)

    def write(self, actor: str, obj: StateObject, etag: str | None) -> str:
        """Write ``obj`` if the object is still at ``etag`` (None: still absent); returns the
        new ETag, or raises WriteConflict when another writer came first."""
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
        try:
            put = self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(actor),
                Body=obj.encode(),
                ContentType="application/msgpack",
                **condition,
            )
        except (ClientError, BotoCoreError) as e:
            if error_code(e) in _LOST_RACE:
                raise WriteConflict(self.where(actor)) from e
            raise as_aws_error("PutObject", self.where(actor), e) from e
        return str(put["ETag"])

    def remove(self, actor: str, etag: str) -> bool:
        """Delete the object if it is still at ``etag`` (a conditional DeleteObject); returns
        whether it went. Never raises: a failure leaves the object, which reads as the
        actor's default state (a tombstone), and is logged. An S3 or a botocore without
        conditional deletes leaves it too: an unconditional delete could take a newer
        version another holder wrote since (the caller no longer holds the lease)."""
        from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

        where = self.where(actor)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(actor), IfMatch=etag)
        except ParamValidationError as e:
            log.error(
                "removing %s needs a botocore with conditional deletes; it stays: %s", where, e
            )
            return False
        except (ClientError, BotoCoreError) as e:
            if error_code(e) in _LOST_RACE:
                log.warning("%s was written again before its removal; it stays", where)
            else:
                log.error(
                    "removing %s failed; it stays: %s",
                    where,
                    as_aws_error("DeleteObject", where, e),
                )
            return False
        return True

    def actors(self, since_ms: int) -> Iterator[str]:
        """The actor keys of the objects written since ``since_ms`` (S3's LastModified)."""
        from botocore.exceptions import BotoCoreError, ClientError

        base = f"{self.prefix}/" if self.prefix else ""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base
        )
        try:
            for page in pages:
                for row in page.get("Contents", []):
                    if row["LastModified"].timestamp() * 1000 >= since_ms:
                        yield row["Key"][len(base) :]
        except (ClientError, BotoCoreError) as e:
            raise as_aws_error("ListObjectsV2", f"s3://{self.bucket}/{base}", e) from e

    def check(self) -> None:
        """Fail early with a clear error if the bucket is missing or not ours to use."""
        aws_call("HeadBucket", f"s3://{self.bucket}", self.client.head_bucket, Bucket=self.bucket)
