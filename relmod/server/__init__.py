"""The relmod broker: one per project, it watches the files and tells every client what changed.

=====================  =========================================================================
module                 owns
=====================  =========================================================================
``broker``             the loop thread: batches, requests, syncs, heartbeats, publishing
``sockets``            binding the PUB and ROUTER sockets (ipc, tcp, tcp with CURVE)
``requests``           the answer to each ROUTER request kind
``status``             the status report
``project``            file hashes, broken files, the dependency graph; a batch -> an update
``fileids``            the file ids of this epoch: which id names which path on the wire
``scanner``            reading and judging one file; the first scan of a project, in background
``scan``               a file's project dependencies; the walk over a project's Python files
``imports``            a file's import statements from its bytes (fast reader, ast reference)
``resolve``            import statements -> files of the project, as Python's path finder looks
``roots``              where absolute imports resolve: root, src/, pyproject.toml, clients' paths
``scancache``          what earlier scans learned, on disk, so a restart reads only changes
``edges``              runtime edges clients report, owned by the clients that reported them
``pending``            merging and pacing batches; holding them while git works
``history``            past publications, to answer "what changed since"
``clients``            the table of connected clients
``fleet``              what each client runs of each file; its reloads and failures
``curve``              CURVE keys and client authentication for ``--tcp``
``cli``                the ``relmod-broker`` command (also ``python -m relmod.server``)
=====================  =========================================================================

Nothing here imports :mod:`relmod.client`; both sides share :mod:`relmod.protocol`,
:mod:`relmod.connfile`, :mod:`relmod.graph` and :mod:`relmod.sources`.
"""
