"""Reading catalog drops: formats, attributes, and whole-drop rejection with a clear message."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from helpers import raw_rows, write_drop
from mmsearch import warehouse
from mmsearch.catalog.cleaning import clean_catalog
from mmsearch.catalog.drops import DropRejected, copy_drop, read_products, read_queries
from mmsearch.catalog.ingestion import ingest_drop
from mmsearch.settings import HomeLayout


def test_csv_extra_columns_become_attributes(tmp_path):
    drop = write_drop(tmp_path / "d", [{"product_id": "p1", "title": "Tee", "color": "red"}])
    frame = read_products(drop)
    assert frame.loc[0, "row_number"] == 1
    assert json.loads(frame.loc[0, "attributes"]) == {"color": "red"}


def test_jsonl_bad_line_is_a_row_with_its_error(tmp_path):
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / "products.jsonl").write_text('{"product_id": "a", "title": "A"}\nnot json\n')
    frame = read_products(drop)
    assert len(frame) == 2
    assert frame.loc[1, "_read_error"].startswith("line 2")


def test_parquet_is_read(tmp_path):
    drop = tmp_path / "d"
    drop.mkdir()
    pd.DataFrame({"product_id": [1, 2], "title": ["A", "B"], "price": [1.5, None]}).to_parquet(
        drop / "products.parquet"
    )
    frame = read_products(drop)
    assert list(frame["product_id"]) == ["1", "2"] and frame.loc[1, "price"] is None


def test_parquet_integer_columns_with_a_missing_value_stay_whole_numbers(tmp_path):
    # A database export: integer ids, a 0/1 `deleted` flag and GTINs, each with a NULL. pandas
    # alone would read them as floats: ids "1001.0" that a later CSV's "1001" does not replace,
    # a deletion "1.0" that removes nothing, a 14-digit GTIN rounded.
    import pyarrow as pa
    import pyarrow.parquet as pq

    drop = tmp_path / "db-export"
    drop.mkdir()
    table = pa.table(
        {
            "product_id": pa.array([1001, 1002, None], pa.int64()),
            "title": ["Mug", "Lamp", "Vase"],
            "deleted": pa.array([0, 1, None], pa.int8()),
            "gtin": pa.array([None, 2**62 + 1, 4006381333931], pa.int64()),
        }
    )
    pq.write_table(table, drop / "products.parquet")
    frame = read_products(drop)
    assert frame["product_id"].tolist() == ["1001", "1002", None]
    assert frame["deleted"].tolist() == ["0", "1", None]
    assert [json.loads(a).get("gtin") for a in frame["attributes"]] == [
        None,
        str(2**62 + 1),
        "4006381333931",
    ]
    catalog = clean_catalog(
        raw_rows(
            "db-export", 1, frame.rename(columns={"_read_error": "read_error"}).to_dict("records")
        ),
        {"db-export": drop},
        tmp_path / "clean",
    )
    assert catalog.products["product_id"].tolist() == ["1001"]  # 1002 deleted, the third has no id


def test_parquet_missing_timestamps_are_no_attribute_not_the_text_nat(tmp_path):
    drop = tmp_path / "d"
    drop.mkdir()
    pd.DataFrame(
        {
            "product_id": ["a", "b"],
            "title": ["A", "B"],
            "launched": pd.to_datetime(["2024-01-02", None]),
        }
    ).to_parquet(drop / "products.parquet")
    attributes = [json.loads(a) for a in read_products(drop)["attributes"]]
    assert attributes == [{"launched": "2024-01-02 00:00:00"}, {}]


def test_jsonl_keys_are_matched_whatever_their_case_line_by_line(tmp_path):
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / "products.jsonl").write_text(
        '{"product_id": "a", "title": "A"}\n'
        '{"Product_ID": "b", "Title": "B", "Colour": "red"}\n'
        '{"product_id": "c", "Product_ID": "c2", "title": "C"}\n'
    )
    frame = read_products(drop)
    assert frame["product_id"].tolist()[:2] == ["a", "b"] and frame.loc[1, "title"] == "B"
    assert json.loads(frame.loc[1, "attributes"]) == {"colour": "red"}
    assert frame["_read_error"].tolist() == [
        None,
        None,
        "line 3 names product_id twice (as 'product_id' and 'Product_ID')",
    ]


@pytest.mark.parametrize(
    ("setup", "problem"),
    [
        (lambda d: None, "no products file"),
        (
            lambda d: (d / "products.csv").write_text("sku,name\n1,x\n"),
            "lacks required column(s) product_id, title",
        ),
        (lambda d: (d / "products.csv").write_bytes(b"\x00\x01\x02" * 50), "NUL bytes"),
        (
            lambda d: (d / "products.csv").write_bytes(b"product_id,title\n1,\x81\x8d\x9d\n"),
            "neither UTF-8 nor Windows-1252",
        ),
        (
            # UTF-16 without its byte order mark cannot be told from binary.
            lambda d: (d / "products.csv").write_bytes(
                "product_id,title\n1,x\n".encode("utf-16-le")
            ),
            "NUL bytes",
        ),
        (
            lambda d: (d / "products.parquet").write_bytes(b"PAR1 not really"),
            "not a readable table",
        ),
        (
            lambda d: (d / "products.csv").write_text('product_id,"title\n1,unterminated\n'),
            "not a readable table (line 1: unexpected end of data)",
        ),
        (
            lambda d: (
                (d / "products.csv").write_text("product_id,title\n"),
                (d / "products.jsonl").write_text(""),
            ),
            "more than one",
        ),
    ],
)
def test_unreadable_drop_is_rejected_naming_drop_and_problem(tmp_path, setup, problem):
    drop = tmp_path / "broken-drop"
    drop.mkdir()
    setup(drop)
    with pytest.raises(DropRejected) as caught:
        read_products(drop)
    assert "broken-drop" in str(caught.value) and problem in str(caught.value)
    assert str(caught.value).endswith("(the drop format: docs/interface.md)")


def test_windows_1252_csv_is_decoded(tmp_path):
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / "products.csv").write_bytes("product_id,title\n1,Café crème\n".encode("cp1252"))
    assert read_products(drop).loc[0, "title"] == "Café crème"


def test_ingest_keeps_drop_row_and_time_and_records_rejections(tmp_path):
    layout = HomeLayout(tmp_path / "home").ensure()
    write_drop(
        layout.landing / "good",
        [{"product_id": "p1", "title": "A"}, {"product_id": "p2", "title": "B"}],
    )
    (layout.landing / "bad").mkdir()
    with warehouse.connect(layout.warehouse) as con:
        good = ingest_drop(con, layout, "good")
        bad = ingest_drop(con, layout, "bad")
        rows = con.execute(
            "SELECT drop_name, row_number, ingested_at IS NOT NULL FROM raw_products ORDER BY 2"
        ).fetchall()
        drops = con.execute("SELECT name, status, message FROM drops ORDER BY seq").fetchall()
    assert (good.status, good.rows) == ("accepted", 2)
    assert bad.status == "rejected" and "'bad'" in bad.message
    assert rows == [("good", 1, True), ("good", 2, True)]
    assert drops[1][1] == "rejected" and "no products file" in drops[1][2]


def test_copy_drop_is_idempotent_and_never_overwrites(tmp_path):
    source = write_drop(tmp_path / "feed", [{"product_id": "p1", "title": "A"}])
    landing = tmp_path / "landing"
    landing.mkdir()
    assert copy_drop(source, landing) == "feed"
    assert copy_drop(source, landing) == "feed"
    write_drop(source, [{"product_id": "p1", "title": "Changed"}])
    assert copy_drop(source, landing) == "feed-v2"
    assert "Changed" not in (landing / "feed" / "products.csv").read_text()


def test_query_file_accepts_lists_and_graded_relevance(tmp_path):
    path = tmp_path / "queries.jsonl"
    path.write_text(
        '{"query_id": "a", "text": "red tee", "relevant": ["p1"]}\n'
        '{"query_id": "b", "image_path": "q.png", "relevant": {"p2": 3, "p3": 1}, "kind": "image"}\n'
        '{"query_id": "c", "relevant": ["p1"]}\nbroken\n'
    )
    frame = read_queries(path)
    assert list(frame["query_id"]) == ["a", "b"]
    assert json.loads(frame.loc[1, "relevant"]) == {"p2": 3.0, "p3": 1.0}
    assert frame.loc[0, "kind"] == "text"


def test_a_drops_query_lines_with_grades_that_are_not_numbers_are_skipped(tmp_path):
    layout = HomeLayout(tmp_path / "home").ensure()
    drop = write_drop(layout.landing / "graded", [{"product_id": "p1", "title": "A"}])
    (drop / "queries.jsonl").write_text(
        '{"query_id": "words", "text": "a", "relevant": {"p1": "high"}}\n'
        '{"query_id": "null", "text": "a", "relevant": {"p1": null}}\n'
        '{"query_id": "list", "text": "a", "relevant": {"p1": [3]}}\n'
        '{"query_id": "nan", "text": "a", "relevant": {"p1": NaN}}\n'
        '{"query_id": "kept", "text": "a", "relevant": {"p1": "2", "p2": true}}\n'
    )
    with warehouse.connect(layout.warehouse) as con:
        report = ingest_drop(con, layout, "graded")
        stored = con.execute("SELECT query_id, relevant FROM raw_queries").fetchall()
    assert (report.status, report.rows) == ("accepted", 1)
    assert [(qid, json.loads(relevant)) for qid, relevant in stored] == [
        ("kept", {"p1": 2.0, "p2": 1.0})
    ]


def test_csv_row_with_more_fields_than_the_header_is_quarantined_not_the_drop(tmp_path):
    drop = tmp_path / "shop-export"
    drop.mkdir()
    # Row 2's title holds an unquoted comma: one row is broken, not the table.
    (drop / "products.csv").write_bytes(
        b"product_id,title,price\r\np1,Mug,3\r\np2,Big, red mug,4\r\n\r\np3,Lamp,5\r\n"
    )
    frame = read_products(drop)
    assert frame["product_id"].tolist() == ["p1", "p2", "p3"]
    assert frame["row_number"].tolist() == [1, 2, 3]
    assert frame["_read_error"].tolist() == [
        None,
        "row 2 (line 3) has 4 fields where the header has 3; "
        "a value holding a comma needs double quotes",
        None,
    ]
    assert frame.loc[2, "title"] == "Lamp" and frame.loc[0, "price"] == "3"
    catalog = clean_catalog(
        raw_rows(
            "shop-export", 1, frame.rename(columns={"_read_error": "read_error"}).to_dict("records")
        ),
        {"shop-export": drop},
        tmp_path / "clean",
    )
    assert sorted(catalog.products["product_id"]) == ["p1", "p3"]
    quarantined = catalog.quarantine.set_index("row_number")
    assert quarantined.loc[2, "reason_code"] == "unreadable_row"
    assert "has 4 fields where the header has 3" in quarantined.loc[2, "reason"]


def test_csv_rows_ending_in_empty_fields_past_the_header_are_read_whole(tmp_path):
    drop = tmp_path / "script-export"
    drop.mkdir()
    # A script that writes a comma after every value leaves empty fields past the header.
    (drop / "products.csv").write_bytes(
        b"product_id,title,price\r\n007,Mug,3,\r\np2,Lamp,5,,\r\np3,Vase,6,,blue\r\n"
    )
    frame = read_products(drop)
    assert frame[["product_id", "title", "price"]].values.tolist() == [
        ["007", "Mug", "3"],
        ["p2", "Lamp", "5"],
        ["p3", "Vase", "6"],
    ]
    errors = frame["_read_error"].tolist()
    assert errors[:2] == [None, None]
    assert errors[2].startswith("row 3 (line 4) has 5 fields where the header has 3")


def test_csv_saved_by_excel_with_semicolons_is_read_by_its_columns(tmp_path):
    # Excel in many European locales saves "CSV" with `;` between values (and `,` as the
    # decimal mark), in Windows-1252 with Windows line ends.
    drop = tmp_path / "excel-de"
    drop.mkdir()
    (drop / "products.csv").write_bytes(
        "Product_ID;Title;Price;Farbe\r\n"
        "0042;Tasse groß;12,50 €;rot\r\n"
        '0043;"Kanne; 1,5 l";1.299,00;blau\r\n'
        "0044;Teller;3;grün;extra\r\n".encode("cp1252")
    )
    frame = read_products(drop)
    assert frame[["product_id", "title", "price"]].values.tolist() == [
        ["0042", "Tasse groß", "12,50 €"],
        ["0043", "Kanne; 1,5 l", "1.299,00"],
        ["0044", "Teller", "3"],
    ]
    assert json.loads(frame.loc[0, "attributes"]) == {"farbe": "rot"}
    assert frame["_read_error"].tolist()[:2] == [None, None]
    assert frame["_read_error"].tolist()[2].startswith("row 3 (line 4) has 5 fields")


def test_csv_saved_as_utf16_with_its_byte_order_mark_is_read(tmp_path):
    drop = tmp_path / "unicode-text"
    drop.mkdir()
    # As Excel saves "Unicode Text": UTF-16 with its byte order mark, values between tabs.
    text = "product_id\ttitle\tprice\r\np1\tCrème mug ☕\t12\r\n"
    (drop / "products.csv").write_bytes(text.encode("utf-16"))
    frame = read_products(drop)
    assert frame[["product_id", "title", "price"]].values.tolist() == [["p1", "Crème mug ☕", "12"]]
    (drop / "products.csv").write_bytes(text.replace("\t", ",").encode("utf-16"))
    assert read_products(drop)["title"].tolist() == ["Crème mug ☕"]


def test_csv_broken_quoting_quarantines_the_row_and_reads_on(tmp_path):
    drop = tmp_path / "quoted"
    drop.mkdir()
    # p2's title has text after a closing quote; p4's opens a quote it never closes, which
    # would swallow every row after it; p3's quoted title rightly holds a line break and a
    # doubled quote.
    (drop / "products.csv").write_text(
        "product_id,title,price\n"
        "p1,Mug,3\n"
        'p2,"Big" mug,4\n'
        'p3,"Lamp\nwith a ""shade""",5\n'
        'p4,"Vase,6\n'
        "p5,Bowl,7\n"
        "p6,Cup,8\n"
    )
    frame = read_products(drop)
    assert frame["product_id"].tolist() == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert frame.loc[2, "title"] == 'Lamp\nwith a "shade"' and frame.loc[5, "price"] == "8"
    errors = frame["_read_error"].tolist()
    assert [bool(e) for e in errors] == [False, True, False, True, False, False]
    assert errors[1].startswith("row 2 (line 3) is not readable CSV (',' expected after '\"')")
    assert errors[3].startswith("row 4 (line 6) is not readable CSV (unexpected end of data)")
    assert errors[3].endswith('needs double quotes around it and the quote doubled ("")')
    # Only a header that cannot be read rejects the drop.
    (drop / "products.csv").write_text('product_id,"title" x\np1,Mug\n')
    with pytest.raises(DropRejected, match=r"not a readable table \(line 1: "):
        read_products(drop)


def test_csv_first_row_with_extra_fields_does_not_shift_the_columns_of_the_others(tmp_path):
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / "products.csv").write_text("product_id,title\np1,Mug,red\np2,Lamp\n")
    frame = read_products(drop)
    assert frame[["product_id", "title"]].values.tolist() == [["p1", "Mug"], ["p2", "Lamp"]]
    assert frame["_read_error"].tolist()[0].startswith("row 1 (line 2) has 3 fields")
