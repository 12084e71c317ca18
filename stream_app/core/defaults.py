"""Defaults of the pure modules' parameter objects, read from the one place they are written: Settings.

Imported lazily (at the first default needed, not at module import), so stream_app.core stays importable and
testable without the settings module's dependencies being loaded first.
"""

from __future__ import annotations

from typing import Any


def setting_default(name: str) -> Any:
    """The default of the Settings field `name` (InterestParams, CollabParams and RankParams take theirs here)."""
    from stream_app.settings import setting_default as default  # noqa: PLC0415 - lazy on purpose

    return default(name)
