"""Reading YAML that a person (or a damaged file) hands plan-job: specs, --set values,
calibration records, plan.yaml, jobs.yaml, emit.yaml.

yaml.safe_load is safe from code execution, not from size: a 420-byte document of nested
aliases ("a billion laughs") stands for 9^8 values. Loading it is cheap (the aliases share
one object), but anything that walks the value, such as an error message echoing it, never
ends. The document's graph is measured before it becomes Python values, and one that would
expand past MAX_EXPANDED values (or refers to itself) is refused. Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# A plan.yaml of a large plan holds a few thousand values; nothing plan-job reads needs more.
MAX_EXPANDED = 100_000


class YamlInputError(ValueError):
    """The text is not YAML plan-job accepts: the message says why, in a few words."""


class YamlTooLargeError(YamlInputError):
    """Valid YAML whose aliases expand past MAX_EXPANDED values, or into a cycle."""


def read_text(path: Path) -> str:
    """A file's text as UTF-8; OSError as open() raises it, YamlInputError (a ValueError) for
    bytes that are not UTF-8 text."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlInputError(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}): save it as UTF-8"
        ) from None


def load_yaml(text: str) -> Any:
    """yaml.safe_load with aliases bounded; YamlInputError for invalid YAML too."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlInputError(f"not valid YAML: {_short(exc)}") from None
    except RecursionError:
        raise YamlInputError("not valid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _check_size(root: yaml.Node) -> None:
    """Refuse a graph of nodes that expands past MAX_EXPANDED values, or holds a cycle."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise YamlTooLargeError("an alias refers to the value that holds it (a cycle)")
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_nodes.discard(key)
        if total > MAX_EXPANDED:
            raise YamlTooLargeError(
                f"its aliases (*name) expand to more than {MAX_EXPANDED:,} values; plan-job "
                "reads no document that large: write the values out"
            )
        sizes[key] = total
        return total

    size(root)


def _short(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and where, without the quoted source lines (long, or binary)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        context = f"{exc.context}: " if exc.context else ""
        return f"{context}{exc.problem}{where}"[:300]
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
