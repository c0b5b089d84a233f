"""Shared base for the three nouns: frozen pydantic models that reject unknown keys, plus the
helpers that turn a bad file into one readable error line instead of a traceback."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class FrozenModel(BaseModel):
    """Immutable, strict-keyed base: a typo in a config file is an error, not a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class InputError(ValueError):
    """A user mistake (bad file, unknown preset, invalid value). The CLI prints it as one line and
    exits with status 2."""


def describe_validation_error(err: ValidationError, what: str) -> str:
    """One line per problem: `what: field 'a.b': message (got X)`."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not a field of this model)"
        got = e.get("input")
        got_txt = ""
        if got is not None and not isinstance(got, (dict, list)) and e["type"] != "missing":
            got_txt = f" (got {got!r})"
        lines.append(f"{what}: field '{loc}': {msg}{got_txt}")
    return "; ".join(lines)


def validate_as(model: type[M], data: Any, what: str) -> M:
    """Validate `data` as `model`, raising InputError with field names and values on failure."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InputError(describe_validation_error(err, what)) from None


def read_json(path: str | Path, what: str) -> Any:
    """Read a JSON file, naming the file and position in the error if it is malformed."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what}: file not found: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{what}: {p} is not valid JSON ({err.msg} at line {err.lineno}, "
                         f"column {err.colno})") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a file so that readers see either the old file or the complete new one, never half."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Atomic JSON file (see write_text_atomic)."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
