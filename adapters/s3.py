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
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from actor_system.adapters.aws import as_aws_error, aws_call, aws_client, error_code, url_number
from actor_system.errors import ConfigError
from actor_system.ports import FORMAT_VERSION, Retained, StateObject, WriteConflict

__all__ = ["FORMAT_VERSION", "Retained", "S3StateStore", "StateObject", "WriteConflict"]

if TYPE_CHECKING:
    from collections.abc import Iterator

REPLAY_WINDOW_S = 60.0
# S3 answers a conditional PUT that lost with 412; one racing another in flight may get 409.
_LOST_RACE = frozenset(("PreconditionFailed", "ConditionalRequestConflict"))
_GONE = frozenset(("NoSuchKey", "404"))

log = logging.getLogger("actor_system")


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

    @property
    def name(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

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
            if error_code(e) in _LOST_RACE or (etag is not None and error_code(e) in _GONE):
                # Another holder wrote it, or removed it (If-Match on no object: 404).
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
            elif error_code(e) in _GONE:
                log.info("%s was removed already", where)
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
