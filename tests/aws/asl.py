"""Just enough of Amazon States Language to run a generated definition's Task states in tests.

``evaluate`` resolves a ``Parameters``/``ResultSelector`` template the way Step Functions
does: keys ending in ``.$`` take a path (``$.a.b`` on the input, ``$$.a.b`` on the context
object) or an intrinsic function; the intrinsics the definitions use are implemented here
(States.Format, States.Array, States.StringToJson, States.StringSplit, States.ArrayGetItem,
States.UUID). ``apply_result_path`` puts a task's (selected) result into its input.
Anything else raises, so a definition that relies on unsupported syntax fails the test.
"""
from __future__ import annotations

import copy
import json
import re
import uuid

_PATH = re.compile(r"\$\$?(?:\.[A-Za-z0-9_]+)*")


def lookup(path: str, document, context: dict):
    root, rest = (context, path[2:]) if path.startswith("$$") else (document, path[1:])
    value = root
    for part in filter(None, rest.split(".")):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"{path}: no {part!r}")
        value = value[part]
    return value


class _Parser:
    def __init__(self, text: str, document, context: dict):
        self.text, self.position, self.document, self.context = text, 0, document, context

    def parse(self):
        value = self.expression()
        if self.position != len(self.text):
            raise ValueError(f"trailing text in {self.text!r} at {self.position}")
        return value

    def skip(self) -> None:
        while self.position < len(self.text) and self.text[self.position] == " ":
            self.position += 1

    def expression(self):
        self.skip()
        text = self.text[self.position:]
        if text.startswith("'"):
            return self.literal()
        if text.startswith("$"):
            match = _PATH.match(text)
            self.position += match.end()
            return lookup(match.group(0), self.document, self.context)
        number = re.match(r"-?\d+", text)
        if number:
            self.position += number.end()
            return int(number.group(0))
        call = re.match(r"States\.([A-Za-z]+)\(", text)
        if not call:
            raise ValueError(f"cannot parse {text!r}")
        self.position += call.end()
        arguments = []
        self.skip()
        while self.text[self.position] != ")":
            arguments.append(self.expression())
            self.skip()
            if self.text[self.position] == ",":
                self.position += 1
        self.position += 1
        return FUNCTIONS[call.group(1)](*arguments)

    def literal(self) -> str:
        self.position += 1
        out = []
        while self.text[self.position] != "'":
            if self.text[self.position] == "\\":
                self.position += 1
            out.append(self.text[self.position])
            self.position += 1
        self.position += 1
        return "".join(out)


def _format(template: str, *arguments) -> str:
    pieces = re.split(r"(?<!\\)\{\}", template)
    if len(pieces) - 1 != len(arguments):
        raise ValueError(f"States.Format({template!r}) got {len(arguments)} arguments")
    text = pieces[0]
    for argument, piece in zip(arguments, pieces[1:]):
        text += (argument if isinstance(argument, str) else json.dumps(argument)) + piece
    return text.replace("\\{", "{").replace("\\}", "}")


FUNCTIONS = {
    "Format": _format,
    "Array": lambda *items: list(items),
    "StringToJson": json.loads,
    "StringSplit": lambda text, separators: [piece for piece in re.split("[" + re.escape(separators) + "]", text) if piece],
    "ArrayGetItem": lambda items, index: items[index],
    "UUID": lambda: str(uuid.uuid4()),
}


def evaluate(template, document, context: dict):
    """A Parameters or ResultSelector template resolved against ``document`` and the context object."""
    if isinstance(template, dict):
        out = {}
        for key, value in template.items():
            if key.endswith(".$"):
                out[key[:-2]] = (_Parser(value, document, context).parse() if value.startswith("States.")
                                 else lookup(value, document, context))
            else:
                out[key] = evaluate(value, document, context)
        return out
    if isinstance(template, list):
        return [evaluate(item, document, context) for item in template]
    return template


def apply_result_path(state: dict, document, result):
    path = state.get("ResultPath", "$")
    if path is None:
        return document
    if path == "$":
        return result
    out = copy.deepcopy(document)
    target = out
    parts = path[2:].split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = result
    return out
