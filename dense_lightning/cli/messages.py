"""How the command reports a user's mistake: one ``dense-lightning: error: ...`` line, status 2.

A report that lists problems by kind (the dataset checks) keeps one line per kind; every
other message is joined into one line. Anything that is not the user's to fix (a bug) keeps
its traceback.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser
from typing_extensions import override

from dense_lightning.equivalent import NotEquivalentError
from dense_lightning.errors import ConfigurationError

__all__ = [
    "PROG",
    "USER_ERRORS",
    "DenseArgumentParser",
    "error_text",
    "fail",
    "one_line",
    "user_error",
]

PROG = "dense-lightning"
# Errors that are the user's to fix: printed without a traceback, exit status 2.
USER_ERRORS = (ConfigurationError, NotEquivalentError)


def _type_name(text: str) -> str:
    """``<class 'int'>`` -> ``int``, ``NoneType`` -> ``null``, Literal[...] -> its values."""
    text = text.strip()
    literal = re.fullmatch(r"(?:typing\.)?Literal\[(.*)\]", text)
    if literal:
        return f"one of {literal.group(1)}"
    name = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", text)
    return "null" if name == "NoneType" else name


def one_line(message: str) -> str:
    """The nested validation message of jsonargparse as one line: key, what was expected, given.

    ``Parser key "output_stride": Does not validate against any of the Union subtypes ...
    Given value: eight`` becomes ``output_stride: expected int or null, got 'eight'``; a
    config file that does not exist becomes ``config: no such file: <path>``. Messages of
    another shape keep their text, joined into one line.
    """
    keys = re.findall(r'Parser key "([^"]+)"', message)
    unknown = re.search(r"Option '([^']+)' is not accepted", message)
    if unknown:
        return f"unknown option {unknown.group(1)!r}" + (f" for {keys[0]}" if keys else "")
    if not keys:
        return " ".join(message.split())
    inner = message[message.rindex(f'Parser key "{keys[-1]}"') :]
    missing = re.search(r"File does not exist: '?([^'\n]+)'?", inner)
    if missing:
        return f"{keys[-1]}: no such file: {missing.group(1)}"
    expected = re.findall(r"Expected an? (.+?)(?:\. Got value:|$)", inner, flags=re.MULTILINE)
    given = re.search(r"(?:Given value|Got value): (.*)", inner)
    names = list(dict.fromkeys(_type_name(e) for e in expected))
    line = f"{keys[-1]}: expected {' or '.join(names) or 'another value'}"
    return line + (f", got {given.group(1).strip()!r}" if given else "")


class DenseArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose errors are one line, not the usage and a nested report."""

    @override
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        # jsonargparse also calls error() on inner parsers to try alternatives (exit_on_error
        # off): those must raise as before.
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        fail(f"{one_line(message)} (see {self.prog.replace(' [options]', '')} --help)")


def fail(message: str) -> NoReturn:
    """Print ``dense-lightning: error: <message>`` on stderr and exit with status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def error_text(error: BaseException) -> str:
    """What :func:`fail` prints for a user error.

    A message whose later lines are indented (a report with one line per kind of problem)
    keeps those lines; any other message is joined into one line.
    """
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and all(line.startswith(" ") for line in lines[1:]):
        head = " ".join(lines[0].split())
        return "\n".join([head, *("  " + " ".join(line.split()) for line in lines[1:])])
    return " ".join(" ".join(lines).split())


def user_error(error: BaseException) -> BaseException | None:
    """The library's configuration error behind ``error`` (jsonargparse wraps them), if any."""
    for link in _chain(error):
        if isinstance(link, USER_ERRORS):
            return link
    return None


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__
