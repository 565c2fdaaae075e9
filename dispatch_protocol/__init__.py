"""The runner channel's wire protocol, shared by the dispatcher and the runner agent.

``dispatch_protocol.messages`` holds every message type (``docs/protocol.md``). The package imports
only msgspec and the standard library, so both distributions contain it: ``redis-dispatcher``
(the server, which also ships the runner) and ``dispatch-runner`` (the runner agent alone, built
from ``packages/dispatch-runner``).
"""
