"""The installed version of the daemon: the trigger for automatic deploys."""

from __future__ import annotations

import subprocess

from bgdeploy.config import Config
from bgdeploy.errors import ConfigError, OperationFailed

VERSION_COMMAND_TIMEOUT_S = 10.0


def installed_version(config: Config) -> str:
    """The stripped stdout of ``daemon.version_command``, else ``daemon.version_file``."""
    d = config.daemon
    if d.version_command:
        try:
            proc = subprocess.run(
                d.version_command,
                cwd=config.base_dir,
                capture_output=True,
                text=True,
                timeout=VERSION_COMMAND_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OperationFailed(
                f"daemon.version_command {d.version_command!r} could not run: {e}.",
                hint="Fix daemon.version_command, or pass --version V.",
            ) from None
        version = proc.stdout.strip()
        if proc.returncode != 0 or not version:
            why = f"exited with code {proc.returncode}" if proc.returncode else "printed nothing"
            raise OperationFailed(
                f"daemon.version_command {d.version_command!r} {why}.",
                hint="It must print the installed version on stdout; or pass --version V.",
            )
        return version
    if d.version_file:
        try:
            version = d.version_file.read_text().strip()
        except OSError as e:
            raise OperationFailed(
                f"Cannot read daemon.version_file {d.version_file}: {e.strerror}.",
                hint="Write the installed version there, or pass --version V.",
            ) from None
        if not version:
            raise OperationFailed(
                f"daemon.version_file {d.version_file} is empty.",
                hint="Write the installed version there, or pass --version V.",
            )
        return version
    raise ConfigError(
        "Neither daemon.version_command nor daemon.version_file is set, so the "
        "installed version is unknown.",
        hint="Set one of them in bgdeploy.toml, or pass --version V.",
    )
