"""relmod's reliability suite: the soak, the fuzzer, and the helpers they share.

- :mod:`.project`: the generated project (modules with import chains) and what its files on disk
  say every module's ``VALUE`` must be.
- :mod:`.procs`: real broker and soak-worker processes, with logs in files.
- :mod:`.soak_worker`: the client process of the soak.
- :mod:`.soak`: the soak driver and the command (``python -m tests.reliability.soak``).
- :mod:`.fuzz`: hypothesis-driven fuzzing of the message decoder and its schema check.

The tests that run small versions of all this are ``tests/test_reliability_*.py``.
"""
