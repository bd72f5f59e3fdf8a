"""A one-line report of any exception, even one whose message is empty."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from jnreg.cli.base import JnregGroup
from jnreg.errors import ModelError, StoreError, first_line


class Quiet(Exception):
    def __str__(self) -> str:
        return ""


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        (ValueError("bad value\nTraceback detail"), "bad value"),
        (ValueError("\n  indented first line  \nmore"), "indented first line"),
        (ValueError(""), "ValueError"),
        (ValueError(), "ValueError"),
        (Quiet(), "Quiet"),
        (OSError(2, "No such file or directory"), "[Errno 2] No such file or directory"),
    ],
)
def test_first_line(exc: BaseException, line: str) -> None:
    assert first_line(exc) == line


def test_an_error_with_no_message_is_still_one_line_at_the_command_line() -> None:
    @click.group(cls=JnregGroup)
    def group() -> None:
        pass

    @group.command()
    def fail() -> None:
        raise StoreError()

    done = CliRunner().invoke(group, ["fail"])
    assert done.exit_code == 1 and done.output == "Error: StoreError\n"


def test_a_loader_failing_with_no_message_is_named() -> None:
    from jnreg.core.models.loading import TINY_MODEL_ID, _load

    def loader(path: str) -> None:
        raise ValueError()

    with pytest.raises(ModelError, match=r"cannot load the tokenizer of 'jnreg:tiny-mistral': ValueError$"):
        _load("tokenizer", TINY_MODEL_ID, loader)
