"""The move logs of one fleet job (`<store dir>/fleet/<job id>/`): each child's JSON events
and its stderr, in a directory only this user can write.

vmigrate often runs as root, and a store may sit in a shared directory such as /tmp: every
path component below the store's directory is opened without following symlinks and checked
(a directory, ours, writable by nobody else), and each file is a fresh one (O_EXCL), opened
relative to the checked directory. A file or link another user planted is never written."""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from vmigrate.errors import VmigrateError

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Tries at a fresh name before giving up (names taken by earlier attempts or a resume).
MAX_NAMES = 1000


class UnsafeLogDirectory(VmigrateError):
    """A directory for the move logs that another user could change."""


def _refusal(path: Path, problem: str) -> UnsafeLogDirectory:
    return UnsafeLogDirectory(
        f"refusing to keep move logs in {path}: {problem}",
        fix=f"remove or fix {path} (it must be a directory owned by you with mode 0700), "
        "or keep the job store in a private directory (--store)",
    )


def _private_subdirectory(parent_fd: int, name: str, shown: Path) -> int:
    """The directory `name` under `parent_fd`, made 0700 if absent; its descriptor."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    try:
        fd = os.open(name, DIRECTORY_FLAGS, dir_fd=parent_fd)
    except OSError as err:  # ELOOP: a symlink; ENOTDIR: a file
        raise _refusal(shown, f"it is not a plain directory ({err.strerror})") from err
    info = os.fstat(fd)
    problem = None
    if info.st_uid != os.geteuid():
        problem = f"it belongs to user id {info.st_uid}, not to this user ({os.geteuid()})"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"others may write in it (mode {stat.S_IMODE(info.st_mode):04o})"
    if problem is not None:
        os.close(fd)
        raise _refusal(shown, problem)
    return fd


def safe_stem(text: str) -> str:
    """A file name part from a VM name: no separators, no dot files."""
    cleaned = re.sub(r"[^A-Za-z0-9_.+-]", "_", text)
    return cleaned if cleaned and not cleaned.startswith(".") else f"_{cleaned}"


@dataclass(frozen=True)
class ChildFiles:
    """A child's two log files: write ends for it, read ends for the scheduler."""

    stem: str
    events_write: int
    errors_write: int
    events_read: int
    errors_read: int


@dataclass
class MoveLogs:
    """`base/<private parts...>`: the parts are made and checked on first use."""

    base: Path
    parts: tuple[str, ...]
    _fd: int | None = field(default=None, repr=False)

    @property
    def path(self) -> Path:
        return self.base.joinpath(*self.parts)

    def _directory(self) -> int:
        if self._fd is None:
            self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            shown = self.base
            try:
                for part in self.parts:
                    shown = shown / part
                    inner = _private_subdirectory(fd, part, shown)
                    os.close(fd)
                    fd = inner
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def _new(self, name: str) -> int:
        return os.open(name, NEW_FILE_FLAGS, 0o600, dir_fd=self._directory())

    def child_files(self, stem: str) -> ChildFiles:
        """Two fresh files `<stem>[.N].events.jsonl` and `.stderr`, never existing ones."""
        directory = self._directory()
        for n in range(MAX_NAMES):
            name = safe_stem(stem) + (f".{n}" if n else "")
            try:
                events = self._new(f"{name}.events.jsonl")
            except FileExistsError:
                continue
            try:
                errors = self._new(f"{name}.stderr")
            except FileExistsError:
                os.close(events)
                continue
            return ChildFiles(
                name,
                events,
                errors,
                os.open(f"{name}.events.jsonl", READ_FLAGS, dir_fd=directory),
                os.open(f"{name}.stderr", READ_FLAGS, dir_fd=directory),
            )
        raise _refusal(self.path, f"no free name for {stem} after {MAX_NAMES} tries")

    def private_file(self, name: str, text: str) -> Path:
        """A new file (0600, never an existing one) holding `text`; its path."""
        with os.fdopen(self._new(name), "w", encoding="utf-8") as handle:
            handle.write(text)
        return self.path / name

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_from(fd: int, offset: int) -> bytes:
    """Everything from `offset` to the end of the file behind `fd`."""
    chunks: list[bytes] = []
    while True:
        chunk = os.pread(fd, 1 << 16, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)
