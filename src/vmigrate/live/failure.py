"""What a failed migrate call means, in one clear cause, whatever words libvirt used.

A destination QEMU that dies mid-migration reaches the source as one of several messages
depending on where the stream was when it broke (recorded in the lab with libvirt 11.3 and
QEMU 10.0); the operator needs one answer: the stream broke, the VM stayed.
"""

from __future__ import annotations

#: Lower-case fragments of libvirt's words for a migration stream that broke.
STREAM_BROKE = (
    "qemu unexpectedly closed the monitor",
    "job 'migration out' failed",
    "job 'migration in' failed",
    "migration stream",
    "connection reset",
    "broken pipe",
    "end of file while reading data",
    "unable to write to socket",
    "unable to read from monitor",
)


def stream_broke(message: str) -> bool:
    lowered = message.lower()
    return any(fragment in lowered for fragment in STREAM_BROKE)


def explain_failure(message: str, *, lost: list[str], destination: str) -> str:
    """The cause first, libvirt's words after: a lost host, a broken stream, or as it was."""
    if lost:
        return (
            f"lost the connection to {' and '.join(lost)} (its libvirtd stopped or the link "
            f"broke): {message}"
        )
    if stream_broke(message):
        return (
            f"the migration stream to {destination} broke (its QEMU exited or the "
            f"connection was reset): {message}"
        )
    return message
