"""Timestamps, version strings and atomic JSON writes shared by every stage."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path


def utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_version(prefix: str, fingerprint: str) -> str:
    """The one place version strings are made: `<prefix>-<UTC time>-<content hash>`."""
    stamp = utc_now().strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{stamp}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:8]}"


def write_json_atomically(path: Path, payload: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(partial, path)
