"""The make commands README.md and docs/ show exist: each target is a Makefile rule and each
VAR= one of its options, so a renamed target or option cannot leave the docs behind."""

import re
import shlex

import pytest

from tools.hosttools import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAKEFILE = (REPO / "Makefile").read_text()
TARGETS = set(re.findall(r"^([a-z][a-z-]*):", MAKEFILE, re.M))
OPTIONS = set(re.findall(r"^([A-Z_]+) \??=", MAKEFILE, re.M))


def make_commands(text):
    """Every `make ...` of inline code and of code blocks, up to a shell operator or comment."""
    snippets = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        snippets += block.splitlines()
    for snippet in snippets:
        for part in re.split(r"&&|;|\|", snippet.split(" #")[0]):
            words = part.split()
            if words[:1] == ["make"] and "-C" not in words:  # -C: another project's Makefile
                yield part.strip()


COMMANDS = sorted({(doc.name, cmd) for doc in DOCS for cmd in make_commands(doc.read_text())})


def test_the_docs_show_make_commands():
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("doc,command", COMMANDS)
def test_make_command_is_in_the_makefile(doc, command):
    for word in shlex.split(command)[1:]:  # NAMES="a b" is one word
        if word.startswith("-"):
            continue
        name = word.split("=")[0]
        if "=" in word:
            assert name in OPTIONS, f"{doc}: `{command}`: no option {name} in the Makefile"
        else:
            assert name in TARGETS, f"{doc}: `{command}`: no target {name} in the Makefile"
