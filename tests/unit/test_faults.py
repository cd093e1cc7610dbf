"""The sentences of the machine's faults, and the exit codes of the signals."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from bgdeploy.errors import EXIT_FAILED
from bgdeploy.faults import Interrupted, as_user_error, registry_fault, storage_error


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.ENOSPC, "is full"),
        (errno.EDQUOT, "is full"),
        (errno.EROFS, "is read-only"),
        (errno.EACCES, "Cannot write"),
        (errno.EIO, "Cannot write"),
    ],
)
def test_a_write_that_the_filesystem_refuses_is_one_sentence(code, words):
    e = storage_error(OSError(code, os.strerror(code), "/srv/state/locks/default.lock"))
    assert words in e.message and "/srv/state/locks/default.lock" in e.message
    assert os.strerror(code) in e.message
    assert e.exit_code == EXIT_FAILED and "no restart" in (e.hint or "")
    assert as_user_error(OSError(code, os.strerror(code))) is not None


def test_other_exceptions_stay_bugs():
    assert as_user_error(OSError(errno.ECONNREFUSED, "refused")) is None
    assert as_user_error(ValueError("x")) is None


@pytest.mark.parametrize(
    ("detail", "words"),
    [
        ("database or disk is full", "filesystem is full"),
        ("attempt to write a readonly database", "read-only"),
        ("database is locked", "locked by another process"),
    ],
)
def test_sqlite_words_become_a_sentence_about_the_registry(tmp_path, detail, words):
    e = registry_fault(detail, f"sqlite:///{tmp_path / 'registry.db'}")
    assert e is not None and words in e.message and str(tmp_path) in e.message


def test_an_unknown_sqlite_error_is_left_to_the_caller(tmp_path):
    assert registry_fault("no such table: boots", f"sqlite:///{tmp_path / 'r.db'}") is None


@pytest.mark.parametrize(
    ("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)]
)
def test_an_interruption_names_its_signal_and_exits_128_plus_it(sig, code):
    stop = Interrupted(sig)
    assert stop.exit_code == code
    assert stop.reason == f"interrupted by {signal.Signals(sig).name}"
    # Not a KeyboardInterrupt (Typer would swallow it) and no `except Exception` takes it.
    assert not isinstance(stop, KeyboardInterrupt | Exception)
