"""Where the embedded ClickHouse HTTP server splits a request into its statement and its rows."""

from __future__ import annotations

import pytest

from libs.embedded.clickhouse_sql import StatementError, split_statement


def test_insert_format_native_rows_start_after_the_first_newline_and_stay_bytes() -> None:
    rows = b"\x02\x01\x01a\x06String\x00\xff\n\x00"
    st = split_statement(b"INSERT INTO t (`a`, `b`) FORMAT Native\n" + rows)
    assert (st.kind, st.sql, st.insert_format, st.data) == ("INSERT", "INSERT INTO t (`a`, `b`)", "Native", rows)


def test_without_a_newline_the_rows_start_after_the_whitespace() -> None:
    st = split_statement(b"insert into t format JSONEachRow   {\"a\": 1}\n")
    assert (st.sql, st.insert_format, st.data) == ("insert into t", "JSONEachRow", b'{"a": 1}\n')


def test_insert_settings_stay_in_the_statement() -> None:
    st = split_statement(b"INSERT INTO t SETTINGS insert_deduplication_token='x FORMAT y' FORMAT TSV\n1\n")
    assert (st.sql, st.insert_format, st.data) == ("INSERT INTO t SETTINGS insert_deduplication_token='x FORMAT y'", "TSV", b"1\n")


def test_insert_values_stays_whole_for_the_engine_to_bind_its_parameters() -> None:
    st = split_statement(b"INSERT INTO t (a) VALUES ({a:String}), ('b;c')")
    assert (st.kind, st.sql, st.insert_format) == ("INSERT", "INSERT INTO t (a) VALUES ({a:String}), ('b;c')", None)


def test_insert_select_carries_no_rows() -> None:
    st = split_statement(b"INSERT INTO t SELECT * FROM format(JSONEachRow, '{\"a\": 1}')")
    assert (st.kind, st.insert_format) == ("INSERT", None)


def test_format_clause_of_a_select_is_its_output_format_not_a_function_call() -> None:
    assert split_statement(b"SELECT format('{}', 'FORMAT x') AS f\n FORMAT Native").output_format == "Native"
    assert split_statement(b"SELECT format('{}', 1) AS f").output_format is None
    assert split_statement(b"-- FORMAT JSON\nSELECT 1 /* FORMAT CSV */").output_format is None


def test_one_statement_only_and_a_trailing_semicolon_is_fine() -> None:
    assert split_statement(b"SELECT ';' ;  -- done\n").sql == "SELECT ';'"
    with pytest.raises(StatementError, match="Multi-statements"):
        split_statement(b"SELECT 1; SELECT 2")
    with pytest.raises(StatementError, match="Empty query"):
        split_statement(b"  -- nothing\n")
