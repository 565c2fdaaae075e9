"""The dispatcher pod: everything one ``dispatcher serve`` process does for its runners.

- ``pod``: the ``Pod`` (its sockets, delivery, observe/reconcile, tick, doorbell and pump tasks);
- ``session``: the pure, table-driven machine of one connection's server side;
- ``sockets``: the I/O half of a connection (send, close, its poll timer);
- ``channel``: the endpoint ``GET /v1/runners/{runner}/channel`` and its frame handlers;
- ``longpoll``: holding, ending and lingering after a connection's long poll;
- ``doorbell``: the pod's pub/sub subscription; ``bells``: what a bell says (pure).

``Pod`` is imported on first use (``from dispatcher.pod import Pod``), so the pure modules
(``dispatcher.pod.session``, ``bells``) import nothing of the pod's I/O side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.pod.pod import Pod

__all__ = ["Pod"]


def __getattr__(name: str) -> Any:
    if name == "Pod":
        from dispatcher.pod.pod import Pod

        return Pod
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
