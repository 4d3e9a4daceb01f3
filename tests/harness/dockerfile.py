"""A small Dockerfile reader for the image tests: instructions with their arguments (continuation lines
joined, comments dropped), and the rules a builder would reject a file for: unknown instructions, a
file not starting with ARG/FROM, a `COPY --from` naming no earlier stage, a FROM using an undeclared
ARG, a malformed exec form."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

KEYWORDS = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL", "ONBUILD",
    "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})
EXEC_FORM = frozenset({"CMD", "ENTRYPOINT", "RUN", "SHELL", "HEALTHCHECK"})


class DockerfileError(ValueError):
    pass


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form CMD/ENTRYPOINT/RUN, None for the shell form."""
        if not self.args.startswith("["):
            return None
        value = json.loads(self.args)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise DockerfileError(f"line {self.line}: {self.keyword} exec form must be a JSON array of strings")
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as by BuildKit
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        joined = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = joined.partition(" ")
        if keyword.upper() not in KEYWORDS:
            raise DockerfileError(f"line {start}: unknown instruction {keyword!r}")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
    if pending:
        raise DockerfileError("the file ends inside a line continuation")
    _check(instructions)
    return instructions


def _check(instructions: list[Instruction]) -> None:
    if not instructions:
        raise DockerfileError("no instructions")
    global_args: set[str] = set()
    stages: list[str] = []
    seen_from = False
    for instruction in instructions:
        if not seen_from and instruction.keyword not in ("ARG", "FROM"):
            raise DockerfileError(f"line {instruction.line}: {instruction.keyword} before the first FROM")
        if instruction.keyword == "ARG" and not seen_from:
            global_args.add(instruction.args.split("=", 1)[0])
        elif instruction.keyword == "FROM":
            seen_from = True
            parts = instruction.args.split()
            for used in re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", parts[0]):
                if used not in global_args:
                    raise DockerfileError(f"line {instruction.line}: FROM uses ${used}, not declared by an ARG before it")
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.append(parts[2].lower())
            elif len(parts) != 1:
                raise DockerfileError(f"line {instruction.line}: FROM IMAGE [AS NAME], not {instruction.args!r}")
            else:
                stages.append(str(len(stages)))
        elif instruction.keyword == "COPY" and instruction.args.startswith("--from="):
            source = instruction.args.split()[0].removeprefix("--from=").lower()
            if source not in stages[:-1]:
                raise DockerfileError(f"line {instruction.line}: COPY --from={source}: no earlier stage of that name")
        if instruction.keyword in EXEC_FORM:
            instruction.exec_form()
        if not instruction.args:
            raise DockerfileError(f"line {instruction.line}: {instruction.keyword} without arguments")
