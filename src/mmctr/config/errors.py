"""The config error, in a module that imports nothing (models and the CLI raise and catch it
without loading the YAML loader)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config the user must fix. ``str()`` is the whole explanation; ``problems`` lists the
    individual problems when there are several."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])
