"""A parameterised statement is one round trip to PostgreSQL, and reads and fails as pg8000's own run."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.errors import SkillEmailError


class FlushCounter:
    """Counts the flushes of a pg8000 connection's socket: each one is a round trip's request."""

    def __init__(self, raw: object) -> None:
        self.sock = raw._sock  # type: ignore[attr-defined]
        self.flushes = 0
        original = self.sock.flush

        def flush() -> None:
            self.flushes += 1
            original()

        self.sock.flush = flush


def test_a_parameterised_statement_is_one_round_trip(conn):
    counter = FlushCounter(conn.raw)
    rows = conn.run("SELECT CAST(:n AS INT) + 1 AS m, CAST(:s AS TEXT) AS s", n=41, s="한글")
    assert rows == [{"m": 42, "s": "한글"}]
    assert counter.flushes == 1


def test_values_read_back_as_pg8000_reads_them(conn):
    sql = (
        "SELECT CAST(:j AS JSONB) AS j, CAST(:a AS TEXT[]) AS a, CAST(:t AS TIMESTAMP) AS t, "
        "CAST(:n AS TEXT) AS n, :b AS b, :i AS i"
    )
    params = {
        "j": '{"k": [1, "두"]}',
        "a": ["x", "y z"],
        "t": dt.datetime(2026, 1, 2, 3, 4, 5, 600_000),
        "n": None,
        "b": True,
        "i": 7,
    }
    (row,) = conn.run(sql, **params)
    (theirs,) = conn.raw.run(sql, **params)
    assert list(row.values()) == theirs
    assert row["j"] == {"k": [1, "두"]} and row["a"] == ["x", "y z"] and row["t"] == params["t"]


def test_a_statement_without_rows_answers_no_rows(conn):
    conn.run("CREATE TEMP TABLE t (v INT PRIMARY KEY)")
    assert conn.run("INSERT INTO t (v) VALUES (:v)", v=1) == []
    assert conn.run("SELECT v FROM t WHERE v = :v", v=1) == [{"v": 1}]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM no_such_table WHERE a = :v",  # fails at Parse
        "SELECT CAST(:v AS INT)",  # fails at Bind: 'x' is not an integer
        "SELECT 1 / (CAST(:v AS TEXT) = 'x')::int - 1 / 0",  # fails at Execute
    ],
)
def test_an_error_at_any_step_raises_and_the_connection_goes_on(conn, sql):
    with pytest.raises(SkillEmailError):
        conn.run(sql, v="x")
    assert conn.run("SELECT CAST(:v AS TEXT) AS v", v="after") == [{"v": "after"}]


def test_an_error_inside_a_transaction_rolls_it_back(conn):
    conn.run("CREATE TEMP TABLE u (v INT PRIMARY KEY)")
    with pytest.raises(SkillEmailError), conn.transaction():
        conn.run("INSERT INTO u (v) VALUES (:v)", v=1)
        conn.run("INSERT INTO u (v) VALUES (:v)", v=1)
    assert conn.run("SELECT count(*) AS n FROM u WHERE v = :v", v=1) == [{"n": 0}]


def test_a_statement_on_a_closed_connection_is_unavailable(conn):
    conn.close()
    with pytest.raises(SkillEmailError) as raised:
        conn.run("SELECT CAST(:v AS TEXT)", v="x")
    assert raised.value.status == 503
