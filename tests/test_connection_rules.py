"""The broker feed's sequence rules, fast: no broker, no sockets, a fake host.

A publication is applied only when it is the next one of the current epoch. A duplicate is
dropped; a gap, a heartbeat ahead of us, or a new epoch asks the broker what we missed (a
resync); ``bye`` ends the session. The end-to-end tests (tests/test_e2e_broker.py,
tests/test_reliability_*.py) show the same rules with real processes; these show each rule alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from relmod.client.connection import (
    BrokerFeed,
    Send,
    _Command,
    _Lost,
    failure_parts,
    sequence_verdict,
)
from relmod.errors import ReloadError
from relmod.machinery.registry import Registry, SourceProvider
from relmod.protocol import Codec, Message, new_key, pack_ids


class FakeHost:
    """A FeedHost that records what the feed marks."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.invalidated: list[list[str]] = []
        self.changed: list[list[str] | None] = []
        self.log: list[str] = []

    def files_changed(self, paths: Iterable[str]) -> set[str]:
        return set()

    def verify_files(self, paths: Iterable[str]) -> set[str]:
        return set()

    def apply_invalidation(
        self, affected: Iterable[str], changed: Iterable[str] | None = None
    ) -> set[str]:
        # What the registry marks: the changed files are affected too, said once.
        said = [] if changed is None else list(changed)
        self.invalidated.append(said + [path for path in affected if path not in said])
        self.changed.append(None if changed is None else said)
        self.log.append("invalidate")
        return set()

    def known_files(self) -> list[str]:
        return []

    def watched_folders(self) -> set[str]:
        return set()


class RecordingPlugin:
    """A FeedPlugin that notes when hashes arrive (they must come before the marks)."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.hashes: list[dict[str, str | None]] = []

    @property
    def sources(self) -> SourceProvider | None:
        return None

    def attach(self, host: Any, wake: Any) -> None:
        pass

    def session_started(self) -> None:
        pass

    def hashes_arrived(
        self, hashes: Mapping[str, str | None], *, full: bool, root: str | None
    ) -> None:
        self.hashes.append(dict(hashes))
        self.host.log.append("hashes")

    def send_requests(self, send: Send) -> None:
        pass

    def take_reply(self, msg: Message) -> bool:
        return False

    def status(self) -> dict[str, Any]:
        return {}

    def forked(self) -> RecordingPlugin:
        return self


def message(kind: str, **body: Any) -> Message:
    return Message(kind=kind, body=body, sender=b"s" * 16, counter=1)


def invalidate(
    seq: int, epoch: str = "E", path: str = "/srv/p/a.py", affected: Iterable[int] = (0,)
) -> Message:
    """An invalidation of ``path`` (id 0), which affects the ids ``affected``."""
    return message(
        "invalidate",
        epoch=epoch,
        seq=seq,
        changed=[[0, path, "h"]],
        affected=pack_ids(affected),
        names=[],
    )


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def feed(host: FakeHost, tmp_path: Path) -> Any:
    feed = BrokerFeed(host, tmp_path / "conn.json", path_map={"/srv/p": "/w/p"})
    feed.epoch, feed.seq = "E", 4
    yield feed
    feed.stop()


# -- the rule alone -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "body", "verdict"),
    [
        ("invalidate", {"epoch": "E", "seq": 5}, "apply"),  # the next one
        ("broken", {"epoch": "E", "seq": 5}, "apply"),
        ("invalidate", {"epoch": "E", "seq": 4}, "drop"),  # a duplicate
        ("invalidate", {"epoch": "E", "seq": 1}, "drop"),  # an old one
        ("invalidate", {"epoch": "E", "seq": 6}, "resync"),  # a gap
        ("heartbeat", {"epoch": "E", "seq": 5}, "resync"),  # the last update was lost
        ("heartbeat", {"epoch": "E", "seq": 4}, "drop"),  # all is well
        ("heartbeat", {"epoch": "E", "seq": 3}, "drop"),
        ("invalidate", {"epoch": "F", "seq": 5}, "resync"),  # a new broker instance
        ("heartbeat", {"epoch": "F", "seq": 0}, "resync"),
        ("bye", {"epoch": "E"}, "bye"),
    ],
)
def test_sequence_verdicts(kind: str, body: dict[str, Any], verdict: str) -> None:
    assert sequence_verdict(kind, body, "E", 4) == verdict


def test_before_the_first_session_every_publication_asks_for_a_resync() -> None:
    assert sequence_verdict("heartbeat", {"epoch": "E", "seq": 0}, None, 0) == "resync"


# -- the feed applying them ---------------------------------------------------------------------


def test_the_next_invalidation_marks_the_local_paths_and_advances(
    feed: Any, host: FakeHost
) -> None:
    feed.broken["/w/p/a.py"] = (1, "broken before")
    assert feed._on_publication(invalidate(5)) is False
    assert host.invalidated == [["/w/p/a.py"]], "broker paths are mapped to local ones"
    assert host.changed == [["/w/p/a.py"]], "so are the changed files, passed apart"
    assert feed.seq == 5 and feed.invalidations == 1
    assert feed.broken == {}, "a change of a broken file clears its notice"


def test_an_invalidation_marks_the_loaded_modules_among_its_ids(feed: Any, host: FakeHost) -> None:
    table = [(0, "/srv/p/a.py"), (1, "/srv/p/b.py"), (2, "/srv/p/c.py"), (3, "/srv/p/pkg")]
    assert feed.files.replace(table) is None
    feed.files.loaded(["/w/p/b.py", "/w/p/pkg/d.py"], root="/w/p")  # c.py is not loaded here
    assert feed._on_publication(invalidate(5, affected=[0, 1, 2, 3])) is False
    # a.py changed (named), b.py is loaded, pkg holds a loaded module; c.py stays out
    assert sorted(host.invalidated[0]) == ["/w/p/a.py", "/w/p/b.py", "/w/p/pkg"]
    assert feed.seq == 5


def test_a_module_loaded_later_is_reached_by_its_id(host: FakeHost, tmp_path: Path) -> None:
    module = tmp_path / "late.py"
    module.write_text("X = 1\n")
    feed = BrokerFeed(host, tmp_path / "conn.json")
    try:
        feed.epoch, feed.seq = "E", 4
        feed.files.replace([(0, "/elsewhere/a.py"), (7, str(module))])
        host.registry.load(str(module))
        feed._on_load(str(module))  # the registry's load listener, on a user thread
        publication = invalidate(5, path="/elsewhere/a.py", affected=[0, 7])
        assert feed._on_publication(publication) is False
        assert host.invalidated == [["/elsewhere/a.py", str(module)]]
    finally:
        feed.stop()


@pytest.mark.parametrize(
    ("publication", "problem"),
    [
        (invalidate(5, affected=[0, 9]), "unknown id 9"),
        (
            message(
                "invalidate",
                epoch="E",
                seq=5,
                changed=[[1, "/srv/p/b.py", None]],
                affected=pack_ids([1]),
                names=[],
            ),
            "id 1 names /srv/p/b.py",
        ),
        (
            message(
                "invalidate",
                epoch="E",
                seq=5,
                changed=[[5, "/srv/p/a.py", None]],
                affected=pack_ids([5]),
                names=[],
            ),
            "/srv/p/a.py has id 5",
        ),
    ],
    ids=["unknown", "id-for-another-path", "path-under-another-id"],
)
def test_ids_the_table_refuses_drop_the_message_and_ask_for_the_table(
    feed: Any, host: FakeHost, publication: Message, problem: str, caplog: Any
) -> None:
    feed.files.replace([(0, "/srv/p/a.py"), (1, "/srv/p/other.py")])
    assert feed._on_publication(publication) is True  # a resync...
    assert feed._need_table  # ... for the whole table
    assert host.invalidated == [] and feed.seq == 4
    assert feed.dropped == 1 and feed.drop_reasons == {"file ids": 1}
    assert problem in caplog.text and "whole file table" in caplog.text


def test_a_table_with_holes_still_tells_known_ids_from_unknown_ones() -> None:
    from relmod.client.fileids import FileTable

    table = FileTable()
    table.replace([(0, "/p/a.py"), (1, "/p/b.py")])
    assert table.learn([(5, "/p/f.py")]) is None  # ids 2-4 were given, never published
    assert table.check([0, 1, 5]) is None
    assert table.check([0, 3, 5]) == "unknown id 3"
    assert table.check([6]) == "unknown id 6"


def test_a_duplicate_changes_nothing(feed: Any, host: FakeHost) -> None:
    assert feed._on_publication(invalidate(4)) is False
    assert host.invalidated == [] and feed.seq == 4


@pytest.mark.parametrize(
    "publication",
    [
        invalidate(6),  # a gap
        message("heartbeat", epoch="E", seq=5, time=0.0),  # ahead of us
        invalidate(5, epoch="F"),  # a new epoch
    ],
    ids=["gap", "heartbeat-ahead", "new-epoch"],
)
def test_a_loss_asks_for_a_resync_and_marks_nothing_yet(
    feed: Any, host: FakeHost, publication: Message
) -> None:
    assert feed._on_publication(publication) is True
    assert host.invalidated == [] and (feed.epoch, feed.seq) == ("E", 4)


def test_bye_ends_the_session(feed: Any) -> None:
    with pytest.raises(_Lost, match="shut down"):
        feed._on_publication(message("bye", epoch="E"))


def test_a_broken_notice_is_recorded_by_local_path(feed: Any) -> None:
    notice = message(
        "broken", epoch="E", seq=5, path="/srv/p/b.py", lineno=3, message="SyntaxError"
    )
    assert feed._on_publication(notice) is False
    assert feed.broken == {"/w/p/b.py": (3, "SyntaxError")} and feed.seq == 5


def test_a_sync_waiting_for_a_sequence_number_ends_when_it_is_applied(feed: Any) -> None:
    command = _Command("sync")
    feed._waiting_syncs.append((6, command))
    feed._on_publication(invalidate(5))
    assert not command.done.is_set()
    feed._on_publication(invalidate(6))
    assert command.done.is_set() and command.result is True


def test_a_plugin_hears_the_hashes_before_anything_is_marked(
    host: FakeHost, tmp_path: Path
) -> None:
    plugin = RecordingPlugin(host)
    feed = BrokerFeed(host, tmp_path / "conn.json", plugin=plugin)
    try:
        feed.epoch, feed.seq = "E", 0
        feed._on_publication(invalidate(1, path="/p/a.py"))
        feed._on_publication(invalidate(1, path="/p/a.py"))  # a duplicate: not heard
        assert plugin.hashes == [{"/p/a.py": "h"}]
        assert host.log == ["hashes", "invalidate"]
        assert feed.reads_disk and feed.name == "broker"  # a plug-in without sources
    finally:
        feed.stop()


# -- what this process runs, told to the broker ------------------------------------------------


class SentFrames:
    """Stands for the DEALER socket: keeps what the feed sends."""

    def __init__(self) -> None:
        self.frames: list[list[bytes]] = []

    def send_multipart(self, frames: list[bytes]) -> None:
        self.frames.append(frames)


def test_reloads_and_failures_reach_the_broker_as_a_delta_of_what_runs(
    host: FakeHost, tmp_path: Path
) -> None:
    root = str(tmp_path)
    module = tmp_path / "mod.py"
    module.write_text("X = 1\n")
    feed = BrokerFeed(host, tmp_path / "conn.json")
    host.registry.listeners.add(feed._on_event, stale=False)
    host.registry.add_invalidate_listener(feed._on_marked)
    key = new_key()
    client, broker = Codec(key, role="client", root=root), Codec(key, role="broker", root=root)
    dealer = SentFrames()
    try:
        host.registry.load(str(module))
        module.write_text("X = 2\nraise RuntimeError('boom')\n")
        with pytest.raises(ReloadError):
            host.registry.reload(str(module))
        assert feed._news_due is not None  # due a moment later, not sent from the reload

        feed._send_news(client, dealer)  # type: ignore[arg-type]
        [frames] = dealer.frames
        sent = broker.decode(frames)
        assert sent.kind == "running"
        [run] = sent.body["files"]
        assert run["path"] == str(module) and run["failed"] is not None
        assert (run["lineno"], run["message"]) == (2, "RuntimeError: boom")
        [event] = sent.body["events"]
        assert event["kind"] == "failed" and event["lineno"] == 2
        assert feed._news_due is None

        # Nothing new: nothing sent. A stale mark of a file the broker heard of: nothing due.
        feed._send_news(client, dealer)  # type: ignore[arg-type]
        host.registry.invalidate([str(module)])
        assert feed._news_due is None  # no wake a moment after every save
        feed._send_news(client, dealer)  # type: ignore[arg-type]
        assert len(dealer.frames) == 1

        module.write_text("X = 3\n")
        host.registry.reload(str(module))
        feed._send_news(client, dealer)  # type: ignore[arg-type]
        fixed = broker.decode(dealer.frames[-1]).body
        assert [(r["failed"], r["message"]) for r in fixed["files"]] == [(None, None)]
        assert [e["kind"] for e in fixed["events"]] == ["reloaded"]

        # A new session: the broker knows nothing, so the state goes again.
        feed._news_restart()
        feed._send_news(client, dealer)  # type: ignore[arg-type]
        assert broker.decode(dealer.frames[-1]).body["files"] == fixed["files"]
    finally:
        feed.stop()


def test_a_failure_text_gives_its_line_and_short_message() -> None:
    text = (
        "Cannot reload /p/a.py: ValueError at line 12: bad: value. The last good version stays "
        "in use; save a fixed version to reload."
    )
    assert failure_parts("/p/a.py", text) == (12, "ValueError: bad: value")
    gone = "Cannot reload /p/a.py: the file is gone. The last good version stays in use; restore"
    assert failure_parts("/p/a.py", gone) == (None, "the file is gone")
