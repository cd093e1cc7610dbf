"""One exception root. Each subclass carries its exit code and a hint.

The CLI catches ``BgdeployError`` in one place and prints
``Error: <sentence>`` and the hint; nothing else turns errors into exit codes.
"""

from __future__ import annotations

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCK_BUSY = 3


class BgdeployError(Exception):
    """Root of every error bgdeploy reports to a user."""

    exit_code = EXIT_FAILED
    default_hint: str | None = None

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint


class ConfigError(BgdeployError):
    exit_code = EXIT_USAGE
    default_hint = "Fix bgdeploy.toml (see `bgdeploy init` for a commented starter file)."


class OperationFailed(BgdeployError):
    """The operation did not happen; nothing was lost and the active boot is kept."""

    exit_code = EXIT_FAILED


class RegistryError(BgdeployError):
    exit_code = EXIT_FAILED


class IllegalTransition(BgdeployError):
    exit_code = EXIT_FAILED
    default_hint = "Run `bgdeploy status` to see the current state."


class LockBusy(BgdeployError):
    exit_code = EXIT_LOCK_BUSY
    default_hint = "Wait for it to finish, or pass --wait SECONDS."

    def __init__(self, message: str, holder: object | None = None, hint: str | None = None):
        super().__init__(message, hint)
        self.holder = holder


class BootError(OperationFailed):
    """A boot failed to start, become healthy, attach, or stop."""

    def __init__(self, message: str, hint: str | None = None, log_tail: str = ""):
        super().__init__(message, hint)
        self.log_tail = log_tail
