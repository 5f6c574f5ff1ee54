"""API tokens: made once, shown once, stored only as their SHA-256 in a private file (pure).

A token is 32 random bytes (URL-safe text). The file keeps each token's name, role and hash;
a request's token is hashed and compared with every stored hash in constant time."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from vmigrate.errors import NotFound, UsageError

READ = "read"
OPERATE = "operate"
ROLES = (READ, OPERATE)
#: Token names are labels in a file and in logs: plain words only.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
#: What every stored token starts with, so a leaked one is recognisable (and greppable).
PREFIX = "vmg_"


def default_tokens_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vmigrate" / "serve" / "tokens.json"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenEntry:
    name: str
    role: str
    sha256: str
    created: float

    def to_public(self) -> dict[str, object]:
        """What may be shown: never the hash."""
        return {"name": self.name, "role": self.role, "created": self.created}


class TokenFile:
    """The tokens file (JSON, mode 0600 in a 0700 directory)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_tokens_path()

    def entries(self) -> list[TokenEntry]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            raise UsageError(
                f"cannot read the tokens file {self.path}: {err}",
                fix="remove it and add the tokens again with `vmigrate serve token add`",
            ) from err
        return [TokenEntry(**item) for item in raw.get("tokens", [])]

    def _write(self, entries: list[TokenEntry]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path.parent.chmod(0o700)
        text = json.dumps({"tokens": [e.__dict__ for e in entries]}, indent=2)
        temporary = self.path.with_suffix(".tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        temporary.chmod(0o600)
        temporary.replace(self.path)

    def add(self, name: str, role: str) -> str:
        """A new token for NAME: returned once, stored as its hash only."""
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"token name {name!r} is not a plain name",
                fix="use letters, digits, '.', '_', '@' or '-' (up to 64), e.g. grafana",
            )
        if role not in ROLES:
            raise UsageError(f"unknown role {role!r}", fix="use --role read or --role operate")
        entries = self.entries()
        if any(e.name == name for e in entries):
            raise UsageError(
                f"a token named {name!r} exists in {self.path}",
                fix=f"remove it first (`vmigrate serve token rm {name}`) or pick another name",
            )
        token = PREFIX + secrets.token_urlsafe(32)
        entries.append(TokenEntry(name, role, token_hash(token), time.time()))
        self._write(entries)
        return token

    def remove(self, name: str) -> None:
        entries = self.entries()
        kept = [e for e in entries if e.name != name]
        if len(kept) == len(entries):
            raise NotFound(
                f"no token named {name!r} in {self.path}",
                fix="list them with `vmigrate serve token list`",
            )
        self._write(kept)


def verify(token: str, entries: list[TokenEntry]) -> TokenEntry | None:
    """The entry whose hash matches, compared in constant time against every entry."""
    digest = token_hash(token)
    found = None
    for entry in entries:
        if hmac.compare_digest(digest, entry.sha256):
            found = entry
    return found
