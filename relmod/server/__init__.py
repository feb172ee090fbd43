"""The relmod broker: one per project, it watches the files and tells every client what changed.

=====================  =========================================================================
module                 owns
=====================  =========================================================================
``broker``             the loop thread: batches, requests, syncs, heartbeats, publishing
``sockets``            binding the PUB and ROUTER sockets (ipc, tcp, tcp with CURVE)
``requests``           the answer to each ROUTER request kind
``status``             the status report
``project``            file hashes, broken files, the dependency graph; a batch -> an update
``scanner``            reading, hashing, compile-checking and scanning files (many at once)
``pending``            merging and pacing batches; holding them while git works
``history``            past publications, to answer "what changed since"
``clients``            the table of connected clients
``curve``              CURVE keys and client authentication for ``--tcp``
``cli``                the ``relmod-broker`` command (also ``python -m relmod.server``)
=====================  =========================================================================

Nothing here imports :mod:`relmod.client`; both sides share :mod:`relmod.protocol`,
:mod:`relmod.connfile`, :mod:`relmod.graph` and :mod:`relmod.sources`.
"""
