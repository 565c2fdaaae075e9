"""The reference runner agent, ``dispatch-runner``.

Layout (one concept per module):

- ``events``: the inputs a runner machine accepts, the effects it asks for, the job outcome;
- ``states``: the protocol states and the table of legal transitions;
- ``machine``: the sans-I/O protocol state machine (PROTOCOL.md, runner side);
- ``results``: building (and shrinking) the terminal message for a finished job;
- ``backoff``: pure reconnect back-off with jitter;
- ``failover``: which of several dispatcher URLs to try next, and the delay before it (pure);
- ``executor``: runs one job as a subprocess (process group, timeout, cancel, output caps);
- ``logstream``/``logsend``: the job's live output as `log` chunks (pure batcher; the sender);
- ``spool``: the on-disk result spool and current-job record under ``--state-dir``;
- ``procgroup``: a job's recorded process group, and ending it after the agent died;
- ``jobuser``: ``--job-user`` (running jobs as another user) and the work directory it must reach;
- ``secrecy``: the token out of ``/proc/PID/cmdline`` and ``environ``, a non-dumpable agent;
- ``channel``: opening the WebSocket, reading frames, classifying refusals (401/429);
- ``config``: the agent's settings object;
- ``driver``: the asyncio ``Agent`` that feeds the machine and performs its effects;
- ``logs``/``cli``: logging setup and the ``dispatch-runner`` command.

Nothing here imports the server's dependencies (starlette, uvicorn, redis, rq): the runner needs
only websockets, msgspec and the wire messages (``dispatch_protocol``). It installs alone as the
``dispatch-runner`` distribution (``pip install ./packages/dispatch-runner``); the server's
distribution, ``redis-dispatcher``, contains it too.
"""

from importlib import metadata


def _version() -> str:
    for distribution in ("dispatch-runner", "redis-dispatcher"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "0.0.0+unknown"  # running from a source tree that was never installed


__version__ = _version()
