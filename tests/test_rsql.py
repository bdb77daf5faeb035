"""
Tests for L{medichat.rsql}: parsing, limits, round trips and SQL translation.
"""

from __future__ import annotations

import sqlite3

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from medichat import rsql
from medichat.model import parse_time
from medichat.rsql import (
    And,
    Comparison,
    Field,
    Or,
    RSQLError,
    check_fields,
    check_values,
    parse,
    to_sql,
    unparse,
)


def C(field: str, op: str, *values: str) -> Comparison:
    return Comparison(field, op, values)


SEED_QUERY = "created=le=2021-07-15T11:44:52Z;created=ge=2021-07-14T13:56:35Z"

VALID: list[tuple[str, rsql.Node]] = [
    (
        SEED_QUERY,
        And(
            (
                C("created", "=le=", "2021-07-15T11:44:52Z"),
                C("created", "=ge=", "2021-07-14T13:56:35Z"),
            )
        ),
    ),
    ("a==b", C("a", "==", "b")),
    ("a!=b", C("a", "!=", "b")),
    ("a=lt=1", C("a", "=lt=", "1")),
    ("a=le=1", C("a", "=le=", "1")),
    ("a=gt=1", C("a", "=gt=", "1")),
    ("a=ge=1", C("a", "=ge=", "1")),
    ("a=in=(1)", C("a", "=in=", "1")),
    ("a=in=(1,2,3)", C("a", "=in=", "1", "2", "3")),
    ("a=out=(x,'y z')", C("a", "=out=", "x", "y z")),
    ("a==b;c==d;e==f", And((C("a", "==", "b"), C("c", "==", "d"), C("e", "==", "f")))),
    ("a==b,c==d,e==f", Or((C("a", "==", "b"), C("c", "==", "d"), C("e", "==", "f")))),
    # ";" binds tighter than ",".
    ("a==b,c==d;e==f", Or((C("a", "==", "b"), And((C("c", "==", "d"), C("e", "==", "f")))))),
    ("a==b;c==d,e==f", Or((And((C("a", "==", "b"), C("c", "==", "d"))), C("e", "==", "f")))),
    ("(a==b,c==d);e==f", And((Or((C("a", "==", "b"), C("c", "==", "d"))), C("e", "==", "f")))),
    ("((a==b))", C("a", "==", "b")),
    ("(a==b;c==d);e==f", And((And((C("a", "==", "b"), C("c", "==", "d"))), C("e", "==", "f")))),
    # Quoting and escapes.
    ('a=="hello world"', C("a", "==", "hello world")),
    ("a=='it\\'s'", C("a", "==", "it's")),
    ('a=="say \\"hi\\""', C("a", "==", 'say "hi"')),
    ('a=="back\\\\slash"', C("a", "==", "back\\slash")),
    ("a==''", C("a", "==", "")),
    ('a=="(;,=!~<>)"', C("a", "==", "(;,=!~<>)")),
    ("a=='\"'", C("a", "==", '"')),
    ('a=="\'"', C("a", "==", "'")),
    # Unquoted values may hold anything but the reserved characters.
    ("created=ge=2021-07-14T13:56:35+02:00", C("created", "=ge=", "2021-07-14T13:56:35+02:00")),
    ("a==b\\c", C("a", "==", "b\\c")),
    ("name==Zoë", C("name", "==", "Zoë")),
    ("a==*x*", C("a", "==", "*x*")),
    # Blanks between tokens are skipped.
    (" a == b ; c =in= ( 1 , 2 ) ", And((C("a", "==", "b"), C("c", "=in=", "1", "2")))),
    ("\ta==b", C("a", "==", "b")),
]

INVALID: list[tuple[str, int, str]] = [
    ("", 0, "expected field name, found end of query"),
    ("   ", 3, "expected field name, found end of query"),
    ("a", 1, "expected operator, found end of query"),
    ("a==", 3, "expected value, found end of query"),
    ("==b", 0, "expected field name, found '='"),
    ("a=b", 1, "expected operator"),
    ("a=lt", 1, "expected operator"),
    ("a!b", 1, "expected operator"),
    ("a<b", 1, "expected operator, found '<'"),
    ("a=foo=b", 1, "unknown operator '=foo='"),
    ("a=LT=b", 1, "unknown operator '=LT='"),
    ("a==b;", 5, "expected field name, found end of query"),
    ("a==b,", 5, "expected field name, found end of query"),
    (";a==b", 0, "expected field name, found ';'"),
    ("a==b;;c==d", 5, "expected field name, found ';'"),
    ("a==b)", 4, "unbalanced ')'"),
    ("(a==b", 5, "'(' at position 0 is never closed"),
    ("(a==b c==d)", 6, "expected ';', ',' or ')', found 'c'"),
    ("()", 1, "expected field name, found ')'"),
    ("a==b c==d", 5, "expected ';', ',' or end of query, found 'c'"),
    ("a=='open", 3, "unterminated quoted value"),
    ('a=="open\\"', 3, "unterminated quoted value"),
    ('a=="x\\', 3, "unterminated quoted value"),
    ('a=="x"y', 6, "expected ';', ',' or end of query, found 'y'"),
    ("a==b=c", 4, "expected ';', ',' or end of query, found '='"),
    ("a==b!", 4, "expected ';', ',' or end of query, found '!'"),
    ("a==~", 3, "expected value, found '~'"),
    ("a=in=1", 5, "expected '(' to open the list of =in=, found '1'"),
    ("a=in=()", 6, "expected value, found ')'"),
    ("a=in=(1,)", 8, "expected value, found ')'"),
    ("a=in=(1", 7, "expected ',' or ')' in the list, found end of query"),
    ("a=in=(1;2)", 7, "expected ',' or ')' in the list, found ';'"),
    ("a==(1)", 3, "expected value, found '('"),
    ("a==b\nc==d", 4, "expected ';', ',' or end of query, found U+000A"),
    ("a\x00==b", 1, "expected operator, found U+0000"),
    # The classic injection shapes are not even RSQL.
    ("1=1", 1, "expected operator"),
    ("id==x' OR '1'='1", 5, "expected ';', ',' or end of query, found \"'\""),
    ("id==x;--", 8, "expected operator, found end of query"),
    ("id==1 /* c */", 6, "expected ';', ',' or end of query, found '/'"),
    ("created=le=2021-07-15T11:44:52Z; DROP TABLE messages", 38, "expected operator, found 'T'"),
]


class ParseTests(SynchronousTestCase):
    """
    L{parse} accepts RSQL and builds the tree it means.
    """

    def test_valid(self) -> None:
        """Each valid expression parses into the expected tree."""
        for text, expected in VALID:
            with self.subTest(text=text):
                self.assertEqual(parse(text), expected)

    def test_invalid(self) -> None:
        """Each invalid expression is an RSQLError at the exact position, saying what."""
        for text, position, reason in INVALID:
            with self.subTest(text=text):
                error = self.assertRaises(RSQLError, parse, text)
                self.assertEqual((error.position, error.reason), (position, reason))
                self.assertEqual(str(error), f"at position {position}: {reason}")

    def test_error_is_value_error(self) -> None:
        """RSQLError is a ValueError, so generic value handling catches it."""
        self.assertTrue(issubclass(RSQLError, ValueError))

    def test_seed_query(self) -> None:
        """The seed's recovery query is an AND of two created comparisons."""
        node = parse(SEED_QUERY)
        assert isinstance(node, And)
        self.assertEqual([c.op for c in rsql.comparisons(node)], ["=le=", "=ge="])

    def test_comparison_positions(self) -> None:
        """Each comparison remembers where it starts, for error messages."""
        node = parse("a==1; (b==2,c==3)")
        self.assertEqual([c.position for c in rsql.comparisons(node)], [0, 7, 12])

    def test_position_not_in_equality(self) -> None:
        """Trees compare equal whatever the positions of their comparisons."""
        self.assertEqual(parse(" a==1"), C("a", "==", "1"))

    def test_not_text(self) -> None:
        """Only str is parsed."""
        self.assertRaises(TypeError, parse, b"a==b")


class NulTests(SynchronousTestCase):
    """
    A NUL is refused in values, quoted or escaped, so no store ever has to compare one.
    """

    def test_nul_refused(self) -> None:
        """A literal or escaped NUL in a quoted value is an RSQLError at its position."""
        for text, position in (('a=="x\x00"', 5), ("a=='\\\x00'", 5), ("a==\x00", 3)):
            with self.subTest(text=text):
                error = self.assertRaises(RSQLError, parse, text)
                self.assertEqual(error.position, position)


class LimitTests(SynchronousTestCase):
    """
    L{parse} enforces its limits on length, comparisons and nesting.
    """

    def test_length(self) -> None:
        """A query of 2,000 characters parses; one of 2,001 does not."""
        ok = "a==" + "x" * (rsql.MAX_LENGTH - 3)
        self.assertEqual(parse(ok), C("a", "==", "x" * (rsql.MAX_LENGTH - 3)))
        error = self.assertRaises(RSQLError, parse, ok + "x")
        self.assertEqual(str(error), "at position 2000: query longer than 2000 characters")

    def test_comparisons(self) -> None:
        """Fifty comparisons parse; the fifty-first is refused where it starts."""
        ok = ";".join(["a==1"] * 50)
        self.assertEqual(len(list(rsql.comparisons(parse(ok)))), 50)
        error = self.assertRaises(RSQLError, parse, ok + ",b==2")
        self.assertEqual(str(error), "at position 250: more than 50 comparisons")

    def test_depth(self) -> None:
        """Ten nested parentheses parse; the eleventh is refused where it opens."""
        self.assertEqual(parse("(" * 10 + "a==1" + ")" * 10), C("a", "==", "1"))
        error = self.assertRaises(RSQLError, parse, "(" * 11 + "a==1" + ")" * 11)
        self.assertEqual(str(error), "at position 10: parentheses nested deeper than 10")

    def test_deep_garbage(self) -> None:
        """A long run of parentheses is refused without exhausting the stack."""
        error = self.assertRaises(RSQLError, parse, "(" * 1999)
        self.assertEqual(error.position, 10)

    def test_many_list_values(self) -> None:
        """A long =in= list counts as one comparison; only the length limit bounds it."""
        text = "a=in=(" + ",".join(["1"] * 900) + ")"
        node = parse(text)
        assert isinstance(node, Comparison)
        self.assertEqual(len(node.values), 900)


class CheckTests(SynchronousTestCase):
    """
    L{check_fields} and L{check_values} vet a parsed query before it meets the store.
    """

    def test_known_fields(self) -> None:
        """Queries over the allowed fields pass."""
        check_fields(
            parse(SEED_QUERY + ";userId==x,userRole==employee;id==y"), rsql.MESSAGE_FIELD_NAMES
        )
        check_fields(
            parse("customerId==x;created=gt=2021-01-01T00:00:00Z"), rsql.CONVERSATION_FIELD_NAMES
        )

    def test_unknown_field(self) -> None:
        """An unknown field is named, with its position and the allowed fields."""
        error = self.assertRaises(
            RSQLError, check_fields, parse("created=ge=x;1==1"), rsql.MESSAGE_FIELD_NAMES
        )
        self.assertEqual(
            str(error),
            "at position 13: unknown field '1'; allowed: created, userId, userRole, id",
        )

    def test_field_names_are_case_sensitive(self) -> None:
        """Field names match exactly, as in the JSON."""
        self.assertRaises(RSQLError, check_fields, parse("userid==x"), rsql.MESSAGE_FIELD_NAMES)

    def test_constants(self) -> None:
        """The field-name constants are the ones SPEC section 3 names."""
        self.assertEqual(rsql.MESSAGE_FIELD_NAMES, ("created", "userId", "userRole", "id"))
        self.assertEqual(
            rsql.CONVERSATION_FIELD_NAMES,
            ("created", "customerId", "status", "assigneeId", "lastActivity"),
        )

    def test_check_values(self) -> None:
        """A value its field's converter rejects is an RSQLError naming the field."""
        check_values(parse(SEED_QUERY), {"created": parse_time})
        error = self.assertRaises(
            RSQLError,
            check_values,
            parse("id==1;created=in=(2021-07-15T11:44:52Z,yesterday)"),
            {"created": parse_time},
        )
        self.assertEqual(
            str(error),
            "at position 6: bad value for created: not an RFC 3339 timestamp: 'yesterday'",
        )


def _fields() -> dict[str, Field]:
    return {
        "created": Field("m.created", parse_time),
        "userId": Field("m.user_id", str),
        "userRole": Field("m.user_role", str),
        "id": Field("m.id", str),
    }


class ToSQLTests(SynchronousTestCase):
    """
    L{to_sql} writes parameterised SQL that holds nothing from the query text.
    """

    def test_seed_query(self) -> None:
        """The seed's query becomes two parameterised created comparisons."""
        sql, params = to_sql(parse(SEED_QUERY), _fields(), "?")
        self.assertEqual(sql, "((m.created <= ?) AND (m.created >= ?))")
        self.assertEqual(params, [1626349492000000, 1626270995000000])

    def test_every_operator(self) -> None:
        """Each operator has its SQL counterpart."""
        cases = [
            ("id==a", "(m.id = %s)", ["a"]),
            ("id!=a", "(m.id <> %s)", ["a"]),
            ("id=lt=a", "(m.id < %s)", ["a"]),
            ("id=le=a", "(m.id <= %s)", ["a"]),
            ("id=gt=a", "(m.id > %s)", ["a"]),
            ("id=ge=a", "(m.id >= %s)", ["a"]),
            ("id=in=(a,b)", "(m.id IN (%s, %s))", ["a", "b"]),
            ("id=out=(a)", "(m.id NOT IN (%s))", ["a"]),
        ]
        for text, sql, params in cases:
            with self.subTest(text=text):
                self.assertEqual(to_sql(parse(text), _fields(), "%s"), (sql, params))

    def test_precedence(self) -> None:
        """The SQL keeps the tree's grouping with parentheses."""
        sql, params = to_sql(parse("id==a,userId==b;userRole==c"), _fields(), "?")
        self.assertEqual(sql, "((m.id = ?) OR ((m.user_id = ?) AND (m.user_role = ?)))")
        self.assertEqual(params, ["a", "b", "c"])

    def test_injection_values_are_parameters(self) -> None:
        """Quotes, comments and statement separators in values end up only in parameters."""
        for value in ["x' OR '1'='1", "x;--", "x/* */", "'); DROP TABLE messages; --", "%s", "?"]:
            with self.subTest(value=value):
                text = unparse(C("id", "==", value))
                sql, params = to_sql(parse(text), _fields(), "?")
                self.assertEqual((sql, params), ("(m.id = ?)", [value]))

    def test_against_sqlite(self) -> None:
        """The SQL runs on SQLite and an injection attempt matches nothing."""
        db = sqlite3.connect(":memory:")
        self.addCleanup(db.close)
        db.execute("CREATE TABLE m (id TEXT, user_id TEXT, user_role TEXT, created INTEGER)")
        db.executemany(
            "INSERT INTO m VALUES (?, ?, ?, ?)",
            [("a", "u1", "customer", 1), ("b", "u2", "employee", 2), ("c", "u1", "customer", 3)],
        )
        fields = {**_fields(), "created": Field("m.created", int)}

        def ids(text: str) -> list[str]:
            sql, params = to_sql(parse(text), fields, "?")
            rows = db.execute(f"SELECT id FROM m WHERE {sql} ORDER BY id", params)
            return [r[0] for r in rows]

        self.assertEqual(ids("created=ge=2"), ["b", "c"])
        self.assertEqual(ids("userId==u1;created=lt=3,userRole==employee"), ["a", "b"])
        self.assertEqual(ids("id=out=(a,c)"), ["b"])
        self.assertEqual(ids("id==\"a' OR '1'='1\""), [])
        self.assertEqual(ids("id=='a\\' OR 1=1 --'"), [])

    def test_unknown_field(self) -> None:
        """A field missing from the mapping is an RSQLError listing the allowed ones."""
        error = self.assertRaises(RSQLError, to_sql, parse("id==1;1==1"), _fields(), "?")
        self.assertEqual(
            str(error), "at position 6: unknown field '1'; allowed: created, userId, userRole, id"
        )

    def test_bad_value(self) -> None:
        """A converter's ValueError becomes an RSQLError saying which field."""
        error = self.assertRaises(RSQLError, to_sql, parse("created=ge=soon"), _fields(), "?")
        self.assertEqual(
            str(error), "at position 0: bad value for created: not an RFC 3339 timestamp: 'soon'"
        )

    def test_empty_list(self) -> None:
        """A hand-built =in= with no values is refused."""
        error = self.assertRaises(RSQLError, to_sql, Comparison("id", "=in=", ()), _fields(), "?")
        self.assertEqual(error.reason, "empty list for =in=")

    def test_wrong_arity(self) -> None:
        """A hand-built == with two values is refused."""
        self.assertRaises(RSQLError, to_sql, Comparison("id", "==", ("a", "b")), _fields(), "?")

    def test_unknown_operator(self) -> None:
        """A hand-built comparison with an unknown operator is refused."""
        self.assertRaises(RSQLError, to_sql, Comparison("id", "LIKE", ("a",)), _fields(), "?")

    def test_placeholder(self) -> None:
        """Only the DB-API markers ? and %s are accepted."""
        self.assertRaises(ValueError, to_sql, parse("id==1"), _fields(), ":1")


# ----------------------------------------------------------------------------------------
# Properties

_field_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.",
    min_size=1,
    max_size=8,
)
# Values never hold NUL: the parser refuses it (see NulTests).
_values = st.text(max_size=12).filter(
    lambda v: all(not 0xD800 <= ord(c) <= 0xDFFF and c != "\x00" for c in v)
)
_single_ops = st.sampled_from(["==", "!=", "=lt=", "=le=", "=gt=", "=ge="])


@st.composite
def _comparisons(draw: st.DrawFn) -> Comparison:
    field = draw(_field_names)
    if draw(st.booleans()):
        return Comparison(field, draw(_single_ops), (draw(_values),))
    op = draw(st.sampled_from(["=in=", "=out="]))
    return Comparison(field, op, tuple(draw(st.lists(_values, min_size=1, max_size=4))))


_trees = st.recursive(
    _comparisons(),
    lambda children: st.one_of(
        st.lists(children, min_size=2, max_size=4).map(lambda c: And(tuple(c))),
        st.lists(children, min_size=2, max_size=4).map(lambda c: Or(tuple(c))),
    ),
    max_leaves=20,
)


def _depth(node: rsql.Node) -> int:
    if isinstance(node, Comparison):
        return 0
    return 1 + max(_depth(c) for c in node.children)


class PropertyTests(SynchronousTestCase):
    """
    Properties that hold for every input.
    """

    @settings(max_examples=300, deadline=None)
    @given(_trees)
    def test_round_trip(self, tree: rsql.Node) -> None:
        """Any tree written by unparse parses back into an equal tree."""
        text = unparse(tree)
        if len(text) <= rsql.MAX_LENGTH and _depth(tree) <= rsql.MAX_DEPTH:
            self.assertEqual(parse(text), tree)

    @settings(max_examples=500, deadline=None)
    @given(st.text(max_size=200))
    def test_garbage(self, text: str) -> None:
        """Arbitrary text either parses or raises RSQLError, nothing else."""
        try:
            node = parse(text)
        except RSQLError as e:
            self.assertTrue(0 <= e.position <= len(text))
        else:
            self.assertEqual(parse(unparse(node)), node)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet="ab=!;,()'\"\\ <>~lgtienou", max_size=60))
    def test_garbage_from_syntax(self, text: str) -> None:
        """Text of RSQL's own characters parses or raises RSQLError; SQL has one ? per value."""
        fields = {"a": Field("t.a", str), "b": Field("t.b", str)}
        try:
            node = parse(text)
            sql, params = to_sql(node, fields, "?")
        except RSQLError as e:
            self.assertTrue(0 <= e.position <= len(text))
        else:
            self.assertEqual(sql.count("?"), len(params))
            self.assertEqual(len(params), sum(len(c.values) for c in rsql.comparisons(node)))
            self.assertNotIn("'", sql)
