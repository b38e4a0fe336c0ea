"""The YAML reader of spec files: PyYAML's safe loader with two of YAML 1.1's surprises taken out.

- **A key given twice** in one mapping is an error naming the key and both lines. PyYAML keeps the
  last one silently, so a second ``set:`` or a repeated column would quietly replace the first.
- **Times stay text**: YAML 1.1 reads an unquoted ``22:30`` as the base-60 number 1350 (and
  ``1:30:00`` as 5400); YAML 1.2 dropped that, and so does this reader, so ``start: 22:30`` and
  ``pause: 1:30`` reach the spec checks as written.
- **Leading zeros are decimal**: YAML 1.1 reads ``010000`` as the octal number 4096; YAML 1.2
  (and everyone else) reads it as 10000, and so does this reader.

Booleans stay as YAML 1.1 reads them (``off``/``no``/``false`` and ``on``/``yes``/``true`` unquoted
are booleans): the fields that accept ``off`` read false as off (``rowfill.spec.spec``).
"""

from __future__ import annotations

import re

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping. ``path`` holds the keys leading to that mapping."""

    def __init__(self, key, path: tuple, first_line: int, line: int):
        self.key, self.path, self.first_line, self.line = key, path, first_line, line
        where = ".".join(str(p) for p in (*path, key))
        super().__init__(f"{where} is given twice, at lines {first_line} and {line}; YAML would silently keep only "
                         "the last one. Give it once")


class SpecLoader(yaml.SafeLoader):
    """Safe loading, refusing duplicate keys, without YAML 1.1's base-60 numbers."""

    def get_single_data(self):
        """PyYAML's document loading, with duplicate keys checked first; raises DuplicateKey."""
        node = self.get_single_node()
        if node is None:
            return None
        self._check_duplicates(node)
        return self.construct_document(node)

    def _check_duplicates(self, root) -> None:
        """Walk the node tree (iteratively: aliases may make it a graph) looking for a key given twice."""
        todo: list[tuple[Node, tuple[object, ...]]] = [(root, ())]  # (node, the keys leading to it)
        seen: set[int] = set()
        while todo:
            node, path = todo.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, SequenceNode):
                todo.extend((child, path) for child in node.value)
            elif isinstance(node, MappingNode):
                lines: dict = {}
                for key_node, value_node in node.value:
                    key = None
                    if isinstance(key_node, ScalarNode) and key_node.tag != _MERGE:
                        key = self.construct_object(key_node)
                        try:
                            first = lines.get(key)
                        except TypeError:  # unhashable: PyYAML itself reports it
                            first = None
                        if first is not None:
                            raise DuplicateKey(key, path, first, key_node.start_mark.line + 1)
                        try:
                            lines[key] = key_node.start_mark.line + 1
                        except TypeError:
                            pass
                    todo.append((value_node, (*path, key) if key is not None else path))


SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# YAML 1.1's int and float forms without the base-60 (sexagesimal) and leading-zero octal ones:
# `chunk_rows: 010000` is ten thousand, as YAML 1.2 and people read it, not 4096
SpecLoader.add_implicit_resolver(
    _INT, re.compile(r"""^(?:[-+]?0b[0-1_]+
                         |[-+]?[0-9][0-9_]*
                         |[-+]?0x[0-9a-fA-F_]+)$""", re.X), list("-+0123456789"))
SpecLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                           |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                           |[-+]?\.(?:inf|Inf|INF)
                           |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def _construct_int(loader: SpecLoader, node):
    """PyYAML's int, except that digits with leading zeros are decimal (YAML 1.2), not octal."""
    value = loader.construct_scalar(node).replace("_", "")
    digits = value.lstrip("+-")
    if digits.isdigit():
        return -int(digits) if value.startswith("-") else int(digits)
    return yaml.SafeLoader.construct_yaml_int(loader, node)


SpecLoader.add_constructor(_INT, _construct_int)


def load(text: str):
    """The data of one spec file's text; raises yaml.YAMLError (DuplicateKey among them)."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - SpecLoader is a SafeLoader
