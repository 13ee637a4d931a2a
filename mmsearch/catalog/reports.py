"""What the warehouse says about the catalog: rows by outcome, drops, quarantined rows.

The read side of the catalog tables (`drops`, `row_outcomes`, `clean_products`, `quarantine`)
as `mmsearch run`, `status` and `quarantine` report it. Each function takes the warehouse file
and opens it for the one answer.
"""

from __future__ import annotations

from pathlib import Path

from mmsearch import warehouse


class UnknownDrop(LookupError):
    """A drop name no drop of the warehouse has; the message lists the drops that exist."""

    def __init__(self, name: str, drops: list[str]):
        super().__init__(f"no drop is named {name!r}; drops: {', '.join(drops) or 'none yet'}")
        self.name, self.drops = name, drops


def check_readable(path: Path) -> None:
    """Nothing when the warehouse at `path` reads (or does not exist yet); else raises
    WarehouseDamaged, naming the file and `mmsearch rebuild`."""
    if path.exists():
        with warehouse.connect(path, read_only=True) as con:
            con.execute("SELECT count(*) FROM drops").fetchone()


def rows_and_rejected_drops(path: Path) -> tuple[dict[str, int], list[dict]]:
    """After a run: the rows of accepted drops by outcome (`read`, `live`, `replaced`,
    `quarantined`, `deleted`) and the rejected drops (`name`, `message`), oldest first."""
    with warehouse.connect(path) as con:
        counts = dict(
            con.execute("SELECT outcome, count(*) FROM row_outcomes GROUP BY 1").fetchall()
        )
        read = con.execute(
            "SELECT coalesce(sum(rows_read), 0) FROM drops WHERE status = 'accepted'"
        ).fetchone()[0]
        rejected = con.execute(
            "SELECT name, message FROM drops WHERE status = 'rejected' ORDER BY seq"
        ).fetchall()
    rows = {
        "read": int(read),
        "live": int(counts.get("live", 0)),
        "replaced": int(counts.get("replaced", 0)),
        "quarantined": int(counts.get("quarantined", 0)),
        "deleted": int(counts.get("deleted", 0)),
    }
    return rows, [{"name": name, "message": message} for name, message in rejected]


def catalog_status(path: Path) -> dict:
    """`products` (live), `quarantined` (rows) and `drops`, oldest first, each with its rows by
    outcome, `status` and `message`; zeros and no drops before the warehouse exists."""
    if not path.exists():
        return {"products": 0, "quarantined": 0, "drops": []}
    with warehouse.connect(path, read_only=True) as con:
        products = con.execute("SELECT count(*) FROM clean_products").fetchone()[0]
        quarantine_rows = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        drops = con.execute(
            "SELECT d.name, d.status, d.message, d.rows_read, "
            "count(*) FILTER (WHERE o.outcome = 'live'), count(*) FILTER (WHERE o.outcome = 'replaced'), "
            "count(*) FILTER (WHERE o.outcome = 'quarantined'), count(*) FILTER (WHERE o.outcome = 'deleted') "
            "FROM drops d LEFT JOIN row_outcomes o ON o.drop_name = d.name "
            "GROUP BY d.name, d.status, d.message, d.rows_read, d.seq ORDER BY d.seq"
        ).fetchall()
    return {
        "products": products,
        "quarantined": quarantine_rows,
        "drops": [
            {
                "name": name,
                "rows": rows,
                "live": live,
                "replaced": replaced,
                "quarantined": quarantined,
                "deleted": deleted,
                "status": state,
                "message": message,
            }
            for name, state, message, rows, live, replaced, quarantined, deleted in drops
        ],
    }


def quarantined_rows(path: Path, drop: str | None = None) -> list[dict]:
    """The quarantined rows (`drop`, `row`, `product_id`, `reason_code`, `reason`) of every drop,
    or of the drop named `drop`, in drop then row order; none before the warehouse exists.
    Raises UnknownDrop for a name no drop has."""
    if not path.exists():
        return []
    with warehouse.connect(path, read_only=True) as con:
        drops = [name for (name,) in con.execute("SELECT name FROM drops ORDER BY seq").fetchall()]
        if drop is not None and drop not in drops:
            raise UnknownDrop(drop, drops)
        rows = con.execute(
            "SELECT q.drop_name, q.row_number, q.product_id, q.reason_code, q.reason FROM quarantine q "
            "JOIN drops d ON d.name = q.drop_name WHERE ? IS NULL OR q.drop_name = ? "
            "ORDER BY d.seq, q.row_number",
            [drop, drop],
        ).fetchall()
    return [
        {"drop": d, "row": r, "product_id": p, "reason_code": code, "reason": reason}
        for d, r, p, code, reason in rows
    ]
