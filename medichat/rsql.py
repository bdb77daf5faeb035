"""
A small, strict parser for RSQL, the URI-friendly query language of FIQL's family, and its
translation into parameterised SQL.

The language, as medichat accepts it::

    or-expr     = and-expr *( "," and-expr )
    and-expr    = primary *( ";" primary )          ; ";" binds tighter than ","
    primary     = "(" or-expr ")" / comparison
    comparison  = selector operator arguments
    selector    = 1*unreserved
    operator    = "==" / "!=" / "=lt=" / "=le=" / "=gt=" / "=ge=" / "=in=" / "=out="
    arguments   = value                              ; after every operator but =in=, =out=
                / "(" value *( "," value ) ")"       ; after =in= and =out= only
    value       = 1*unreserved / quoted
    quoted      = DQUOTE *( escaped / not-dquote ) DQUOTE
                / "'" *( escaped / not-squote ) "'"
    escaped     = "\\" any-character                 ; stands for that character (not NUL)
    unreserved  = any character but  " ' ( ) ; , = ! ~ < >  whitespace and controls

Spaces and tabs are skipped between tokens.  A query is at most L{MAX_LENGTH} characters
long, has at most L{MAX_COMPARISONS} comparisons and nests parentheses at most
L{MAX_DEPTH} deep.  Every error is an L{RSQLError} that says where (a 0-based character
position) and what went wrong.

A parsed tree becomes SQL only through L{to_sql}, which writes nothing taken from the query
into the SQL text: selectors are looked up in a mapping of trusted column expressions and
every value becomes a placeholder parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping

import attrs
from attrs import frozen

__all__ = [
    "And",
    "CONVERSATION_FIELD_NAMES",
    "Comparison",
    "Field",
    "MAX_COMPARISONS",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "MESSAGE_FIELD_NAMES",
    "Node",
    "OPERATORS",
    "Or",
    "RSQLError",
    "check_fields",
    "check_values",
    "comparisons",
    "parse",
    "to_sql",
    "unparse",
]

MAX_LENGTH = 2000
"""The longest query text accepted, in characters."""

MAX_COMPARISONS = 50
"""The most comparisons one query may hold."""

MAX_DEPTH = 10
"""The deepest nesting of parentheses accepted."""

MESSAGE_FIELD_NAMES: tuple[str, ...] = ("created", "userId", "userRole", "id")
"""The selectors a query over a conversation's messages may use."""

CONVERSATION_FIELD_NAMES: tuple[str, ...] = (
    "created",
    "customerId",
    "status",
    "assigneeId",
    "lastActivity",
)
"""The selectors a query over the list of conversations may use."""

OPERATORS: tuple[str, ...] = ("==", "!=", "=lt=", "=le=", "=gt=", "=ge=", "=in=", "=out=")
"""Every comparison operator, in canonical spelling."""

_LIST_OPERATORS = frozenset({"=in=", "=out="})
_RESERVED = frozenset("\"'();,=!~<>")
_BLANKS = " \t"


class RSQLError(ValueError):
    """
    A query that is not valid RSQL, breaks a limit, or uses what the target does not know.

    @ivar position: the 0-based character position in the query text where the problem
        was found.
    @ivar reason: what was wrong, without the position.
    """

    def __init__(self, position: int, reason: str) -> None:
        super().__init__(f"at position {position}: {reason}")
        self.position = position
        self.reason = reason


@frozen
class Comparison:
    """
    One comparison: C{selector operator arguments}.

    @ivar field: the selector as written.
    @ivar op: the operator in canonical spelling, one of L{OPERATORS}.
    @ivar values: the arguments, unquoted and unescaped; exactly one unless C{op} is
        C{=in=} or C{=out=}.
    @ivar position: where the comparison starts in the query text (for error messages;
        not part of equality).
    """

    field: str
    op: str
    values: tuple[str, ...]
    position: int = attrs.field(default=0, eq=False, repr=False)


@frozen
class And:
    """
    Every child holds (C{;}).  Has at least two children.
    """

    children: tuple[Node, ...]


@frozen
class Or:
    """
    At least one child holds (C{,}).  Has at least two children.
    """

    children: tuple[Node, ...]


Node = Comparison | And | Or


@frozen
class Field:
    """
    How one selector maps onto SQL.

    @ivar column: a trusted SQL expression for the column (never built from user input).
    @ivar convert: turns a query value (text) into the SQL parameter; raises L{ValueError}
        for values that make no sense for this field.
    """

    column: str
    convert: Callable[[str], object]


# ----------------------------------------------------------------------------------------
# Parsing


def _describe(char: str) -> str:
    """
    Name a character for an error message.
    """
    if char == "":
        return "end of query"
    if char.isprintable() and not char.isspace():
        return repr(char)
    return f"U+{ord(char):04X}"


def _is_unreserved(char: str) -> bool:
    """
    C{True} if C{char} may appear in a selector or an unquoted value.
    """
    return not (char in _RESERVED or char.isspace() or not char.isprintable())


class _Parser:
    """
    A recursive-descent parser over one query text; recursion happens only at
    parentheses, whose depth is limited, so the Python stack stays shallow.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self.count = 0

    def fail(self, reason: str, position: int | None = None) -> RSQLError:
        return RSQLError(self.pos if position is None else position, reason)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_blanks(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _BLANKS:
            self.pos += 1

    def found(self) -> str:
        return _describe(self.peek())

    def parse(self) -> Node:
        node = self.or_expr()
        self.skip_blanks()
        if self.pos < len(self.text):
            char = self.peek()
            if char == ")":
                raise self.fail("unbalanced ')'")
            raise self.fail(f"expected ';', ',' or end of query, found {self.found()}")
        return node

    def or_expr(self) -> Node:
        children = [self.and_expr()]
        while True:
            self.skip_blanks()
            if self.peek() != ",":
                break
            self.pos += 1
            children.append(self.and_expr())
        return children[0] if len(children) == 1 else Or(tuple(children))

    def and_expr(self) -> Node:
        children = [self.primary()]
        while True:
            self.skip_blanks()
            if self.peek() != ";":
                break
            self.pos += 1
            children.append(self.primary())
        return children[0] if len(children) == 1 else And(tuple(children))

    def primary(self) -> Node:
        self.skip_blanks()
        if self.peek() == "(":
            start = self.pos
            if self.depth >= MAX_DEPTH:
                raise self.fail(f"parentheses nested deeper than {MAX_DEPTH}")
            self.pos += 1
            self.depth += 1
            node = self.or_expr()
            self.skip_blanks()
            if self.peek() != ")":
                if self.pos >= len(self.text):
                    raise self.fail(f"'(' at position {start} is never closed")
                raise self.fail(f"expected ';', ',' or ')', found {self.found()}")
            self.pos += 1
            self.depth -= 1
            return node
        return self.comparison()

    def comparison(self) -> Comparison:
        start = self.pos
        if self.count >= MAX_COMPARISONS:
            raise self.fail(f"more than {MAX_COMPARISONS} comparisons")
        selector = self.unreserved()
        if not selector:
            raise self.fail(f"expected field name, found {self.found()}")
        self.skip_blanks()
        op = self.operator()
        self.skip_blanks()
        if op in _LIST_OPERATORS:
            if self.peek() != "(":
                raise self.fail(f"expected '(' to open the list of {op}, found {self.found()}")
            self.pos += 1
            values = [self.value()]
            while True:
                self.skip_blanks()
                char = self.peek()
                if char == ")":
                    self.pos += 1
                    break
                if char != ",":
                    raise self.fail(f"expected ',' or ')' in the list, found {self.found()}")
                self.pos += 1
                values.append(self.value())
        else:
            values = [self.value()]
        self.count += 1
        return Comparison(selector, op, tuple(values), start)

    def operator(self) -> str:
        start = self.pos
        char = self.peek()
        if char == "!":
            if self.text.startswith("!=", self.pos):
                self.pos += 2
                return "!="
            raise self.fail("expected operator")
        if char != "=":
            raise self.fail(f"expected operator, found {self.found()}")
        end = self.pos + 1
        while end < len(self.text) and self.text[end].isascii() and self.text[end].isalpha():
            end += 1
        if end >= len(self.text) or self.text[end] != "=":
            raise self.fail("expected operator")
        op = self.text[start : end + 1]
        if op not in OPERATORS:
            raise self.fail(f"unknown operator {op!r}")
        self.pos = end + 1
        return op

    def unreserved(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and _is_unreserved(self.text[self.pos]):
            self.pos += 1
        return self.text[start : self.pos]

    def value(self) -> str:
        self.skip_blanks()
        char = self.peek()
        if char in ("'", '"'):
            return self.quoted(char)
        text = self.unreserved()
        if not text:
            raise self.fail(f"expected value, found {self.found()}")
        return text

    def quoted(self, quote: str) -> str:
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= len(self.text):
                raise self.fail("unterminated quoted value", start)
            char = self.text[self.pos]
            if char == "\\":
                if self.pos + 1 >= len(self.text):
                    raise self.fail("unterminated quoted value", start)
                if self.text[self.pos + 1] == "\x00":
                    raise self.fail("NUL (U+0000) is not allowed in a value", self.pos + 1)
                out.append(self.text[self.pos + 1])
                self.pos += 2
            elif char == "\x00":
                # No store can compare against it: PostgreSQL's text cannot hold one.
                raise self.fail("NUL (U+0000) is not allowed in a value")
            elif char == quote:
                self.pos += 1
                return "".join(out)
            else:
                out.append(char)
                self.pos += 1


def parse(text: str) -> Node:
    """
    Parse an RSQL query.

    @param text: the query, already percent-decoded.
    @return: its tree.
    @raise RSQLError: if C{text} is not valid or breaks a limit.
    """
    if not isinstance(text, str):
        raise TypeError("RSQL text must be str")
    if len(text) > MAX_LENGTH:
        raise RSQLError(MAX_LENGTH, f"query longer than {MAX_LENGTH} characters")
    return _Parser(text).parse()


# ----------------------------------------------------------------------------------------
# Writing a tree back as text


def _format_value(value: str) -> str:
    """
    A value as query text: bare when it can be, else double-quoted with escapes.
    """
    if value and all(_is_unreserved(c) for c in value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def unparse(node: Node) -> str:
    """
    Write a tree as RSQL text that L{parse} turns back into an equal tree.

    Nested C{And} and C{Or} nodes are parenthesised wherever the grouping would otherwise
    be lost.
    """
    if isinstance(node, Comparison):
        if node.op in _LIST_OPERATORS:
            args = "(" + ",".join(_format_value(v) for v in node.values) + ")"
        else:
            (value,) = node.values
            args = _format_value(value)
        return f"{node.field}{node.op}{args}"
    parts = []
    for child in node.children:
        text = unparse(child)
        if isinstance(child, Comparison) or (isinstance(node, Or) and isinstance(child, And)):
            parts.append(text)
        else:
            parts.append(f"({text})")
    return (";" if isinstance(node, And) else ",").join(parts)


# ----------------------------------------------------------------------------------------
# Checking and translating a tree


def comparisons(node: Node) -> Iterator[Comparison]:
    """
    Every comparison in the tree, left to right.
    """
    if isinstance(node, Comparison):
        yield node
        return
    for child in node.children:
        yield from comparisons(child)


def _unknown_field(comparison: Comparison, allowed: Collection[str]) -> RSQLError:
    return RSQLError(
        comparison.position,
        f"unknown field {comparison.field!r}; allowed: {', '.join(allowed)}",
    )


def check_fields(node: Node, allowed: Collection[str]) -> None:
    """
    Make sure the query only uses the given selectors.

    @raise RSQLError: naming the first unknown field and listing the allowed ones.
    """
    for comparison in comparisons(node):
        if comparison.field not in allowed:
            raise _unknown_field(comparison, allowed)


def check_values(node: Node, converters: Mapping[str, Callable[[str], object]]) -> None:
    """
    Run each value through its field's converter, for early, precise error messages.

    Fields without a converter are not checked.

    @raise RSQLError: C{"bad value for <field>: ..."} when a converter raises
        L{ValueError}.
    """
    for comparison in comparisons(node):
        convert = converters.get(comparison.field)
        if convert is not None:
            for value in comparison.values:
                _convert(comparison, convert, value)


def _convert(comparison: Comparison, convert: Callable[[str], object], value: str) -> object:
    try:
        return convert(value)
    except ValueError as e:
        raise RSQLError(comparison.position, f"bad value for {comparison.field}: {e}") from None


_SQL_OPERATORS = {
    "==": "=",
    "!=": "<>",
    "=lt=": "<",
    "=le=": "<=",
    "=gt=": ">",
    "=ge=": ">=",
    "=in=": "IN",
    "=out=": "NOT IN",
}


def to_sql(node: Node, fields: Mapping[str, Field], placeholder: str) -> tuple[str, list[object]]:
    """
    Translate a tree into a parenthesised SQL boolean expression and its parameters.

    The SQL text holds only the C{column} expressions of C{fields}, operators,
    parentheses and one C{placeholder} per value; values travel as parameters.

    @param fields: the selectors allowed, each with its column and converter.
    @param placeholder: the DB-API parameter marker, C{"?"} (sqlite3) or C{"%s"}
        (psycopg2).
    @raise RSQLError: for an unknown field, a value the field's converter rejects
        (C{"bad value for created: ..."}), or an empty C{=in=}/C{=out=} list.
    """
    if placeholder not in ("?", "%s"):
        raise ValueError(f"unsupported placeholder {placeholder!r}")
    params: list[object] = []
    sql = _to_sql(node, fields, placeholder, params)
    return sql, params


def _to_sql(node: Node, fields: Mapping[str, Field], placeholder: str, params: list[object]) -> str:
    if isinstance(node, Comparison):
        spec = fields.get(node.field)
        if spec is None:
            raise _unknown_field(node, list(fields))
        sql_op = _SQL_OPERATORS.get(node.op)
        if sql_op is None:
            raise RSQLError(node.position, f"unknown operator {node.op!r}")
        if node.op in _LIST_OPERATORS:
            if not node.values:
                raise RSQLError(node.position, f"empty list for {node.op}")
            for value in node.values:
                params.append(_convert(node, spec.convert, value))
            marks = ", ".join([placeholder] * len(node.values))
            return f"({spec.column} {sql_op} ({marks}))"
        if len(node.values) != 1:
            raise RSQLError(node.position, f"{node.op} takes exactly one value")
        params.append(_convert(node, spec.convert, node.values[0]))
        return f"({spec.column} {sql_op} {placeholder})"
    if not node.children:
        raise ValueError("And/Or node without children")
    joiner = " AND " if isinstance(node, And) else " OR "
    return "(" + joiner.join(_to_sql(c, fields, placeholder, params) for c in node.children) + ")"
