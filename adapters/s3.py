"""Actor state in S3: one object per actor, written with conditional PUTs.

The object ``<prefix>/<type>/<id>`` is a msgpack map: the state bytes, a version, the ids of
the messages processed by the last commits, and the outbox (and cancels) of the last commit.
The first write is ``If-None-Match: *``, later ones ``If-Match: <etag>``: a ``412`` means
another holder committed since we read, so our batch is abandoned, never a lost update.
The outbox rides in the object because Redis acknowledges the commit after S3 has taken it:
if the writer dies in between, the next holder finds the object's version ahead of the one
Redis acknowledged and delivers that outbox itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgpack

from actor_system.envelope import Outgoing
from actor_system.errors import ConfigError, DecodeError
from adapters.aws import as_aws_error, aws_call, aws_client, error_code

if TYPE_CHECKING:
    from collections.abc import Sequence

FORMAT_VERSION = 1
# S3 answers a conditional PUT that lost with 412; one racing another in flight may get 409.
_LOST_RACE = frozenset(("PreconditionFailed", "ConditionalRequestConflict"))


class WriteConflict(Exception):
    """A conditional PUT lost: another holder wrote the object since we read it."""


@dataclass(slots=True)
class StateObject:
    """What one actor's S3 object holds, and the ETag it was read with (None: absent)."""

    state: bytes | None = None
    version: int = 0
    done: list[str] = field(default_factory=list)  # processed ids, oldest first
    outbox: list[Outgoing] = field(default_factory=list)  # of the last commit
    cancels: list[str] = field(default_factory=list)  # of the last commit
    etag: str | None = None

    def encode(self) -> bytes:
        return bytes(
            msgpack.packb(
                {
                    "f": FORMAT_VERSION,
                    "version": self.version,
                    "state": self.state,
                    "done": [bytes.fromhex(i) for i in self.done],
                    "outbox": [[o.target, o.id, o.due_ms, o.entry] for o in self.outbox],
                    "cancels": self.cancels,
                },
                use_bin_type=True,
            )
        )

    @classmethod
    def decode(cls, raw: bytes, etag: str, where: str) -> StateObject:
        try:
            m = msgpack.unpackb(raw, raw=False)
            if not isinstance(m, dict) or m.get("f") != FORMAT_VERSION:
                raise ValueError("not a state object of format version 1")
            return cls(
                m["state"],
                int(m["version"]),
                [bytes(i).hex() for i in m["done"]],
                [Outgoing(o[1], o[0], bytes(o[3]), o[2]) for o in m["outbox"]],
                [str(c) for c in m["cancels"]],
                etag,
            )
        except Exception as e:
            raise DecodeError(f"S3 object {where} is not a valid state object: {e}", raw) from e


class S3StateStore:
    """Reads and conditionally writes actor state objects under ``s3://bucket/prefix``."""

    def __init__(self, *, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = client

    @classmethod
    def from_url(cls, url: str) -> S3StateStore:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"state URL {url!r} is not s3://bucket[/prefix]")
        return cls(bucket=parts.netloc, prefix=parts.path)

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
        return StateObject.decode(raw, got["ETag"], self.where(actor))

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

    def check(self) -> None:
        """Fail early with a clear error if the bucket is missing or not ours to use."""
        aws_call("HeadBucket", f"s3://{self.bucket}", self.client.head_bucket, Bucket=self.bucket)


def trim(ids: Sequence[str], keep: int) -> list[str]:
    """The newest ``keep`` ids (the list is oldest first)."""
    return list(ids[-keep:]) if keep > 0 else []
