"""Rule files as YAML *with line numbers*: every problem in a rule is reported as ``file:line key``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from connector.errors import ConnectorError


class RuleError(ConnectorError):
    """Rule files are invalid. ``problems`` lists every ``file:line key: message``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid mapping rules:\n  " + "\n  ".join(problems))
        self.problems = problems


class Located:
    """Maps a key path inside one YAML document to its line."""

    def __init__(self, node: yaml.Node | None) -> None:
        self.node = node

    def line(self, path: tuple[str | int, ...]) -> int | None:
        node = self.node
        best = node.start_mark.line + 1 if node is not None else None
        for part in path:
            if isinstance(node, yaml.MappingNode):
                nxt = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
                if nxt is None:
                    key_node = next((k for k, v in node.value if getattr(k, "value", None) == str(part)), None)
                    return key_node.start_mark.line + 1 if key_node is not None else best
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                return best
            best = node.start_mark.line + 1
        return best


def load_yaml(path: Path) -> tuple[Any, Located]:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RuleError([f"{path}{line}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    return data, Located(node)


def fmt_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
