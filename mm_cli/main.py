"""`mmsearch`: the command line of docs/interface.md.

Every command exits 0 on success and non-zero with a one-line reason on failure; `--json` prints
exactly one JSON object on stdout while everything else (Dagster's logs included) goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shutil
import sys
import traceback
from pathlib import Path

from mmsearch.clock import utc_now
from mmsearch.progress import enable_for_terminal as enable_progress_bars
from mmsearch.settings import HomeLayout, home, mm_home_from_env

SAMPLE_DROP = "sample-catalog"
# Query file lines `evaluate` names that it could not score as written (it counts them all).
UNREAD_LISTED = 20


class UserError(Exception):
    """A failure the user can act on; printed as one line."""


# Exit codes: 0 done; 1 refused or failed (the one-line reason on stderr); 2 a bad argument,
# refused before anything was read; 130 interrupted.
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 2, 130, 141

# Commands that only read a home: on a folder that holds none they say so instead of creating it.
READING_COMMANDS = ("search", "similar", "evaluate", "status", "quarantine", "rollback", "rebuild")


def command_run(
    layout: HomeLayout, force: bool = False, retrain: bool = False, before=None
) -> dict:
    """`mmsearch run`; `before` runs under the run's lock once nothing else is in flight, in
    place of the check that the warehouse opens (see `command_rebuild`)."""
    from mm_assets.definitions import build_definitions
    from mm_assets.runner import run_pipeline
    from mmsearch.catalog.reports import rows_and_rejected_drops
    from mmsearch.index.registry import registry_for

    if before is None:
        _check_warehouse(layout)
    repaired = registry_for(layout).repair_live()
    if repaired:
        print(f"warning: {repaired}", file=sys.stderr)
    summary = run_pipeline(
        layout,
        build_definitions(str(layout.root)),
        force=force,
        retrain=retrain,
        on_wait=lambda message: print(message, file=sys.stderr),
        before=before,
    )
    registry = registry_for(layout)
    release = registry.live()
    rows, rejected = rows_and_rejected_drops(layout.warehouse)
    ingested_now = set(summary.ingested)
    for drop in rejected:
        if drop["name"] in ingested_now:  # earlier runs already said so
            print(f"warning: {drop['message']}", file=sys.stderr)
    return {
        "run_id": summary.run_ids[-1] if summary.run_ids else None,
        "run_ids": summary.run_ids,
        "assets": {
            name: {"seconds": seconds, **summary.asset_details.get(name, {})}
            for name, seconds in summary.asset_seconds.items()
        },
        "checks": {name: {"seconds": seconds} for name, seconds in summary.check_seconds.items()},
        "rows": rows,
        "model_version": release.model_version if release else None,
        "index_size": release.size if release else 0,
        "index_version": release.index_version if release else None,
        "ingested_drops": summary.ingested,
        "rejected_drops": rejected,
        "refreshed": summary.refreshed,
        "retrained_because": summary.retrained_because,
        "refused": summary.refused,
        "waited_for_runs": summary.waited_for,
        "recovered_runs": summary.recovered,
        "orchestrated_by": summary.orchestrated_by,
        "release": _release_summary(registry),
    }


def _check_warehouse(layout: HomeLayout) -> None:
    """WarehouseDamaged (naming the file and `mmsearch rebuild`) before a run starts on a
    warehouse that cannot be read."""
    from mmsearch.catalog.reports import check_readable

    check_readable(layout.warehouse)


def command_ingest(layout: HomeLayout, source: str) -> dict:
    """A drop folder is copied into the landing folder; a feed file or http(s) URL (Merchant
    Center TSV or XML, Shopify CSV) becomes a drop there, its images fetched by URL."""
    from mmsearch.catalog.drops import DropRejected, copy_drop

    try:
        if "://" not in source and Path(source).is_dir():
            return {"drop": copy_drop(Path(source), layout.landing)}
        from mmsearch.catalog.feeds import FeedRejected, ingest_source

        try:
            return ingest_source(source, layout.landing, layout.root)
        except FeedRejected as rejected:
            raise UserError(str(rejected)) from None
    except DropRejected as rejected:
        raise UserError(str(rejected)) from None


def _ingest_text(result: dict) -> str:
    """The drop name first (as for a folder), then what a feed brought and what failed."""
    if "format" not in result:
        return result["drop"]
    images = result["images"]
    lines = [
        result["drop"],
        f"{result['format']} feed: {result['rows']} rows, {images['fetched']} images "
        f"({images['downloaded']} downloaded, {images['fetched'] - images['downloaded']} "
        f"unchanged), {images['failed']} refused",
    ]
    for failure in result["image_failures"]:
        lines.append(
            f"  feed row {failure['feed_row']} ({failure['product_id'] or 'no id'}): "
            f"{failure['url']}: {failure['reason_code']}: {failure['reason']}"
        )
    if result["rows_without_image"]:
        lines.append(
            f"{result['rows_without_image']} row(s) got no usable image and will be live "
            "text-only (`mmsearch run`, then `mmsearch quarantine` lists the refused images)"
        )
    return "\n".join(lines)


def command_rebuild(layout: HomeLayout) -> dict:
    """Move the warehouse aside and build it again from every drop in the landing folder, as
    `run --force` does, through the Dagster instance; search keeps answering from the live
    release, which reads only release files."""
    from mmsearch import warehouse
    from mmsearch.catalog.drops import landed_drops

    drops = landed_drops(layout.landing)
    if not drops:
        raise UserError(f"nothing to rebuild from: no drop in {layout.landing}")
    moved = []

    def move_aside() -> None:
        # Under the run's lock, once no other run is in flight: nothing writes to it meanwhile.
        aside = warehouse.move_aside(layout.warehouse, utc_now().strftime("%Y%m%dT%H%M%SZ"))
        if aside is not None:
            moved.append(aside)
            print(f"moved the warehouse aside to {aside}", file=sys.stderr)

    result = command_run(layout, force=True, before=move_aside)
    return {**result, "moved_aside": str(moved[0]) if moved else None, "drops": drops}


def _release_summary(registry) -> dict | None:
    """How the newest candidate release came about: mode, size, the gate's decision."""
    proposed = registry.candidate()
    if not proposed or not proposed.get("index_version"):
        return None
    manifest = registry.release(proposed["index_version"]).manifest
    keys = ("index_version", "model_version", "mode", "size", "promoted", "promotion_reason")
    return {key: manifest.get(key) for key in keys}


def command_demo(layout: HomeLayout) -> dict:
    from mmsearch.sample import write_sample_catalog

    target = layout.landing / SAMPLE_DROP
    if not target.exists():
        partial = layout.landing / f".{SAMPLE_DROP}.partial"
        write_sample_catalog(partial)
        partial.rename(target)
    result = command_run(layout)
    result["evaluation"] = _evaluation_for(layout, result["model_version"])
    result["sample_searches"] = _sample_searches(layout, target)
    return result


def _sample_searches(layout: HomeLayout, drop: Path) -> list[dict]:
    """One text, one image and one image+text query of the sample, answered by the live index."""

    queries = [
        json.loads(line) for line in (drop / "queries.jsonl").read_text().splitlines() if line
    ]
    engine = _live_engine(layout)
    answers = []
    for kind in ("text", "image", "image+text"):
        query = next((q for q in queries if q.get("kind") == kind), None)
        if query is None:
            continue
        image = drop / query["image_path"] if query.get("image_path") else None
        hits = engine.search(query.get("text"), image, k=3)
        answers.append(
            {
                "kind": kind,
                "text": query.get("text"),
                "image": str(image) if image else None,
                "relevant": query["relevant"],
                "results": hits,
            }
        )
    return answers


def _evaluation_for(layout: HomeLayout, model_version: str | None) -> list[dict]:
    from mmsearch.evaluation.results import stored_evaluation

    if not model_version:
        return []
    return stored_evaluation(layout.warehouse, model_version)


def _live_engine(layout: HomeLayout):
    """The live release's engine; a damaged live release is named on stderr and the newest
    earlier release that verifies answers."""
    from mmsearch.index.registry import registry_for
    from mmsearch.search.engine import SearchEngine

    registry = registry_for(layout)
    engine = SearchEngine.live(registry)
    if registry.pointer_warning and not engine.fallback:
        engine.fallback = registry.pointer_warning
    if engine.fallback:
        print(f"warning: {engine.fallback}", file=sys.stderr)
    return engine


def _filters(args) -> list[tuple[str, str]]:
    """`--filter NAME=VALUE` as (name, value) pairs (their form is checked in `_usage_error`)."""
    from mmsearch.search.variants import parse_filter

    return [parse_filter(text) for text in args.filter or []]


def _narrowing(args) -> dict:
    """The engine's keyword arguments for search and similar's attribute filters, variant
    grouping and availability flags."""
    return {
        "filters": _filters(args),
        "group": not args.no_group,
        "include_unavailable": args.include_unavailable,
    }


def command_search(layout: HomeLayout, args) -> dict:
    from mmsearch.search.engine import UnknownCategory
    from mmsearch.search.variants import UnknownFilter

    text = args.text.strip() if args.text else None
    if not text and not args.image:
        blank = " (--text was blank)" if args.text is not None else ""
        raise UserError(f"give --text, --image, or both{blank}")
    if args.image and not Path(args.image).is_file():
        raise UserError(f"--image {args.image}: no such file")
    if args.k < 1:
        raise UserError("--k must be at least 1")
    engine = _live_engine(layout)
    try:
        answer = engine.answer(
            text or None, args.image, args.k, args.category, args.max_price, **_narrowing(args)
        )
    except (UnknownCategory, UnknownFilter) as error:
        raise UserError(str(error)) from None
    return {
        "model_version": engine.model_version,
        "index_version": engine.release.index_version,
        **answer,
        **({"warning": engine.fallback} if engine.fallback else {}),
    }


def command_similar(layout: HomeLayout, args) -> dict:
    from mmsearch.search.engine import UnknownCategory, UnknownProduct
    from mmsearch.search.variants import UnknownFilter

    if args.k < 1:
        raise UserError("--k must be at least 1")
    engine = _live_engine(layout)
    try:
        engine.check_category(args.category)
        results = engine.similar(
            args.product_id, args.k, args.category, args.max_price, **_narrowing(args)
        )
    except (UnknownProduct, UnknownCategory, UnknownFilter) as error:
        raise UserError(str(error)) from None
    return {
        "product_id": args.product_id,
        "model_version": engine.model_version,
        "index_version": engine.release.index_version,
        # The search results' objects: no query text, so nothing of it matched.
        "results": [{**hit, "matched": hit.get("matched") or {}} for hit in results],
        **({"warning": engine.fallback} if engine.fallback else {}),
    }


def command_serve(layout: HomeLayout, args, out) -> None:
    from mmsearch.server import currency_code, serve

    if any(number is not None and number < 1 for number in (args.workers, args.threads)):
        raise UserError("--workers and --threads must be 1 or more")
    try:
        currency = currency_code(args.currency)
    except ValueError as error:
        raise UserError(str(error)) from None

    def announce(line: str) -> None:
        print(line, file=out, flush=True)

    serve(layout, args.host, args.port, args.workers, args.threads, currency, announce)


def command_evaluate(layout: HomeLayout, args) -> dict:
    from mmsearch.evaluation.scoring import RETRIEVERS, evaluate_engine
    from mmsearch.queries.labeled import query_content_key, query_set_from_file

    query_file = Path(args.queries)
    if not query_file.is_file():
        raise UserError(f"query file {query_file} does not exist")
    engine = _live_engine(layout)
    unread: list[dict] = []
    queries = query_set_from_file(engine, query_file, skipped=unread)
    unread.sort(key=lambda line: line["line"])
    if not len(queries):
        first = f"; line {unread[0]['line']}: {unread[0]['why']}" if unread else ""
        raise UserError(
            f"{query_file} has no usable labeled query{first} (the format: docs/interface.md)"
        )
    trained = set(engine.model_config.get("summary", {}).get("trained_query_keys", []))
    seen = [
        i
        for i, (text, sha) in enumerate(zip(queries.texts, queries.image_shas, strict=True))
        if query_content_key(text, sha) in trained
    ]
    in_file = len(queries)
    if seen and not args.include_trained:
        queries = queries.subset([i for i in range(in_file) if i not in set(seen)])
        if not len(queries):
            raise UserError(
                f"the live model trained on all {in_file} queries of {query_file}; "
                "score them anyway with --include-trained"
            )
    evaluation = evaluate_engine(engine, queries, max(args.k, 10))
    return {
        "model_version": engine.model_version,
        "index_version": engine.release.index_version,
        **evaluation.summary(),
        "retrievers": {
            name: evaluation.summary(name) for name in RETRIEVERS if any(evaluation.per_query[name])
        },
        "significance": evaluation.significance(),
        "queries": {
            "in_file": in_file,
            "trained_on": len(seen),
            "scored": len(queries),
            "trained_on_included": bool(args.include_trained and seen),
            "skipped": sum(not line["scored"] for line in unread),
            # Lines not scored as written, with why: skipped, or scored by their text alone.
            "unread_lines": unread[:UNREAD_LISTED],
        },
    }


def command_status(layout: HomeLayout) -> dict:
    from mmsearch.catalog.reports import catalog_status
    from mmsearch.index.registry import registry_for

    registry = registry_for(layout)
    release = registry.live()
    if registry.pointer_warning:
        print(f"warning: {registry.pointer_warning}", file=sys.stderr)
    return {
        **catalog_status(layout.warehouse),
        "model_version": release.model_version if release else None,
        "index": {
            "type": release.manifest["index_type"] if release else None,
            "size": release.size if release else 0,
            "version": release.index_version if release else None,
            # How the index type was chosen: nprobe and measured recall@10 against exact search.
            "tuning": (release.manifest.get("index") if release else None),
            # The same for the raw text and image encoders' indexes (releases since it was kept).
            "retriever_tuning": (release.manifest.get("retriever_indexes") if release else None),
        },
    }


def command_quarantine(layout: HomeLayout, drop: str | None) -> dict:
    from mmsearch.catalog.galleries import refused_images
    from mmsearch.catalog.reports import UnknownDrop, quarantined_rows

    if not layout.warehouse.exists():
        return {"rows": [], "images": []}
    try:
        rows = quarantined_rows(layout.warehouse, drop)
    except UnknownDrop as unknown:
        raise UserError(str(unknown)) from None
    return {
        "rows": rows,
        # Images refused on their own: the product is live with its other images, or text-only.
        "images": refused_images(layout.warehouse, drop),
    }


def command_rollback(layout: HomeLayout, version: str | None) -> dict:
    from dagster import AssetMaterialization

    from mm_assets.instance import instance_for
    from mmsearch.index.registry import NoSuchRelease, registry_for

    try:
        target, previous = registry_for(layout).rollback(version)
    except NoSuchRelease as missing:
        raise UserError(str(missing)) from None
    # The model in use changed without a run: recorded as a materialization of `fusion_model`,
    # so the assets that follow it (the index catching up with the catalog, evaluation,
    # recommendations) are requested by the next `mmsearch run` or the daemon.
    instance_for(layout).report_runless_asset_event(
        AssetMaterialization(
            "fusion_model",
            description=f"rolled back to {target.model_version}",
            metadata={
                "model_version": target.model_version,
                "trained": False,
                "reason": f"rolled back from {previous.model_version if previous else 'none'}",
                "live_model_version": target.model_version,
                "index_version": target.index_version,
            },
        )
    )
    return {
        "model_version": target.model_version,
        "index_version": target.index_version,
        "previous_model_version": previous.model_version if previous else None,
    }


def command_ui(layout: HomeLayout, port: int) -> None:
    from mm_assets.instance import instance_for

    instance_for(layout)  # sets DAGSTER_HOME and writes dagster.yaml for the current profile
    os.environ["MM_HOME"] = str(layout.root)
    # The dagster beside this interpreter: `.venv/bin/mmsearch ui` works without an activated venv.
    beside = Path(sys.executable).parent / "dagster"
    program = str(beside) if beside.is_file() else "dagster"
    os.execvp(program, [program, "dev", "-m", "mm_assets.definitions", "-p", str(port)])


def _result_line(rank: int, hit: dict) -> str:
    """`  1. 0.912  P123  Red leather tote  (Acme) [bags] 49.00 (was 59.00)  +2 variants
    matched colour=red`; out-of-stock products (shown when asked for) say so."""
    brand = f" ({hit['brand']})" if hit.get("brand") else ""
    price = "" if hit["price"] is None else f" {hit['price']:.2f}"
    if hit.get("list_price") is not None:
        price += f" (was {hit['list_price']:.2f})"
    if hit.get("availability") and hit["availability"] != "in_stock":
        price += f" {hit['availability'].replace('_', ' ')}"
    variants = hit.get("variants") or []
    others = f"  +{len(variants)} variant{'s' if len(variants) != 1 else ''}" if variants else ""
    matched = hit.get("matched") or {}
    reasons = "  matched " + ", ".join(f"{k}={v}" for k, v in matched.items()) if matched else ""
    return (
        f"{rank:>3}. {hit['score']:.3f}  {hit['product_id']}  {hit['title']}{brand} "
        f"[{hit['category'] or '-'}]{price}{others}{reasons}"
    )


def _print_human(command: str, result: dict) -> None:
    if command in ("search", "similar"):
        if not result["results"]:
            print("no product matches")
        for rank, hit in enumerate(result["results"], start=1):
            print(_result_line(rank, hit))
    elif command in ("run", "demo", "rebuild"):
        runs = len(result.get("run_ids") or [])
        by = " by the Dagster daemon" if result.get("orchestrated_by") == "daemon" else ""
        if result["assets"]:
            print(
                f"{runs} run{'s' if runs != 1 else ''}{by} (last {result['run_id']}): "
                f"{_timings_text(result['assets'])}"
            )
        else:
            print("nothing to do, every asset is up to date")
        print(_rows_text(result["rows"]))
        print(f"live model {result['model_version']}, index size {result['index_size']}")
        release = result.get("release") or {}
        if result.get("refused"):
            print(f"new model {release.get('model_version')} not promoted: {result['refused']}")
        if result.get("evaluation"):
            print(_evaluation_text(result["evaluation"]))
        for search in result.get("sample_searches", []):
            query = " + ".join(
                part
                for part in (
                    search["image"] and f"image {Path(search['image']).name}",
                    search["text"] and repr(search["text"]),
                )
                if part
            )
            print(f"\nsample {search['kind']} search: {query}")
            _print_human("search", search)
    elif command == "ingest":
        print(_ingest_text(result))
    elif command == "status":
        print(
            f"{result['products']:,} live products, {result['quarantined']:,} quarantined rows; "
            f"model {result['model_version'] or 'none'}, index {result['index']['type'] or 'none'} "
            f"({result['index']['size']:,} products)"
        )
        if result["drops"]:
            print(
                _table(
                    result["drops"],
                    ["name", "status", "rows", "live", "replaced", "quarantined", "deleted"],
                )
            )
        for drop in result["drops"]:
            if drop["status"] == "rejected":
                print(f"{drop['name']}: {drop['message']}")
    elif command == "evaluate":
        print(_evaluate_text(result))
    elif command == "rollback":
        print(
            f"live: model {result['model_version']}, index {result['index_version']} "
            f"(was model {result['previous_model_version']})"
        )
    elif command == "quarantine":
        if not result["rows"]:
            print("no quarantined rows")
        else:
            print(_table(result["rows"], ["drop", "row", "product_id", "reason_code", "reason"]))
        if result["images"]:
            print(
                f"\n{len(result['images'])} image(s) refused; their products are live with "
                "their other images, or text-only:"
            )
            images = [dict(i, image=i["url"] or i["image_path"]) for i in result["images"]]
            print(_table(images, ["drop", "row", "product_id", "image", "reason_code", "reason"]))
    else:
        print(json.dumps(result, indent=2, default=str))


def _timings_text(assets: dict[str, dict], shown: int = 3) -> str:
    """`21 assets in 12.3 s (slowest: encoder_features 9.0 s, ...)`; `--json` has them all."""
    seconds = sorted(((v["seconds"], k) for k, v in assets.items()), reverse=True)
    slowest = ", ".join(f"{name} {took:.1f} s" for took, name in seconds[:shown])
    total = sum(took for took, _ in seconds)
    count = len(seconds)
    return f"{count} asset{'s' if count != 1 else ''} in {total:.1f} s (slowest: {slowest})"


def _rows_text(rows: dict[str, int]) -> str:
    """`rows: 1,508 read: 1,200 live, 8 replaced, 300 quarantined, 0 deleted`"""
    parts = ", ".join(
        f"{rows.get(key, 0):,} {key}" for key in ("live", "replaced", "quarantined", "deleted")
    )
    return f"rows: {rows.get('read', 0):,} read: {parts}"


def _json_safe(value):
    """`value` with every NaN or infinite float as None (JSON has no NaN) and numpy scalars as
    Python numbers, so `--json` prints what any JSON parser reads."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        with contextlib.suppress(TypeError, ValueError):
            value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and what it was raised from, outermost first."""
    chain: list[BaseException] = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


# What a full disk looks like once SQLite, DuckDB or Dagster reworded it.
_DISK_FULL_SIGNS = ("no space left on device", "disk i/o error", "database or disk is full")


def _disk_full(error: BaseException) -> bool:
    return any(
        (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
        or any(sign in str(e).lower() for sign in _DISK_FULL_SIGNS)
        for e in _causes(error)
    )


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _disk_full_message(layout: HomeLayout, error: BaseException) -> str:
    """One line: which disk is full, what is free, about what a run needs, and what to do."""
    named = next(
        (e.filename for e in _causes(error) if isinstance(e, OSError) and e.filename), None
    )
    path = Path(named) if named else layout.root
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(existing).free
    # A run rewrites the warehouse at a checkpoint and copies new drops' images and rows.
    needed = _size_of(layout.warehouse) + 2 * _size_of(layout.landing)
    return (
        f"no space left on the disk holding {path}: {_megabytes(free)} free, about "
        f"{_megabytes(needed)} needed; free some space and run again (the live release keeps "
        "serving; the drops in the landing folder are kept)"
    )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


def _failure_line(error: BaseException, layout: HomeLayout | None) -> str:
    """The one line a failed command prints: damage and a full disk named with their fix."""
    from mmsearch.warehouse import WarehouseDamaged, is_damage

    for cause in _causes(error):
        if isinstance(cause, WarehouseDamaged):
            return str(cause)
    if layout is not None and _disk_full(error):
        return _disk_full_message(layout, error)
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    # A damaged block met inside a Dagster run arrives reworded (PipelineFailed): name the fix.
    damaged = any(
        is_damage(e) or "could not read enough bytes" in str(e).lower() for e in _causes(error)
    )
    if layout is not None and damaged and "mmsearch rebuild" not in line:
        return str(WarehouseDamaged(layout.warehouse, error))
    return line


def _table(rows: list[dict], columns: list[str]) -> str:
    """A plain text table of `columns` of `rows`, for people."""
    cells = [
        [str(row.get(c, "") if row.get(c) is not None else "-") for c in columns] for row in rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _evaluate_text(result: dict) -> str:
    """MRR per query kind of the ranker and each retriever, and what was scored."""
    methods = {"ranker": result, **result["retrievers"]}
    rows = []
    for kind in [*sorted(result["by_kind"]), "overall"]:
        row = {"kind": kind}
        for name, summary in methods.items():
            metrics = summary["overall"] if kind == "overall" else summary["by_kind"].get(kind)
            row[name] = f"{metrics['mrr']:.3f}" if metrics and metrics["n"] else None
        own = result["overall"] if kind == "overall" else result["by_kind"][kind]
        row["n"] = own["n"]
        test = result["significance"].get(kind, {})
        row["p vs best"] = f"{test['p_value']:.3f} ({test['best_retriever']})" if test else None
        rows.append(row)
    queries = result["queries"]
    unread = "".join(
        f"\n  line {line['line']}: {line['why']}"
        + ("; scored by its text alone" if line["scored"] else "")
        for line in queries["unread_lines"]
    )
    return (
        f"MRR on {queries['scored']} of the file's {queries['in_file']} queries "
        f"({queries['trained_on']} the live model trained on "
        f"{'included' if queries['trained_on_included'] else 'left out'}; "
        f"{queries['skipped']} lines skipped):\n"
        + _table(rows, ["kind", "n", *methods, "p vs best"])
        + (f"\nnot read as written:{unread}" if unread else "")
    )


def _evaluation_text(rows: list[dict]) -> str:
    import pandas as pd

    from mmsearch.evaluation.scoring import markdown_table

    frame = pd.DataFrame(rows)
    return f"evaluation on {frame['source'].iloc[0]} (MRR):\n{markdown_table(frame)}"


def _narrowing_flags(command: argparse.ArgumentParser) -> None:
    """Search and similar's attribute filters, variant grouping and availability flags."""
    command.add_argument(
        "--filter",
        action="append",
        metavar="NAME=VALUE",
        help="only products whose attribute NAME (color, size, material, pattern, gender, "
        "age_group, brand, product_type) is VALUE; repeatable: one name's values are "
        "alternatives, different names must all match",
    )
    command.add_argument(
        "--no-group",
        action="store_true",
        help="list variants one by one (default: one result per variant group)",
    )
    command.add_argument(
        "--include-unavailable",
        action="store_true",
        help="also show out-of-stock products (left out by default)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmsearch", description="Multimodal product search")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show Dagster's run log (-v: info, -vv: debug); quiet by default",
    )
    parser.add_argument(
        "--debug", action="store_true", help="print the full traceback when a command fails"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        if json_flag:
            sub.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        return sub

    add("demo", "write the sample catalog into the landing folder if absent, then run")
    ingest = add(
        "ingest",
        "copy a catalog drop folder, or a Merchant Center / Shopify feed file or URL, into "
        "$MM_HOME/landing/",
    )
    ingest.add_argument("path")
    run = add("run", "register new drops and bring every asset up to date")
    run.add_argument("--force", action="store_true", help="re-ingest every drop and recompute all")
    run.add_argument(
        "--retrain", action="store_true", help="retrain the model even below the change threshold"
    )
    search = add("search", "search the live index")
    search.add_argument("--text")
    search.add_argument("--image")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--category")
    search.add_argument("--max-price", type=float)
    _narrowing_flags(search)
    evaluate = add("evaluate", "score the live model and index on a labeled query file")
    evaluate.add_argument("--queries", required=True)
    evaluate.add_argument("--k", type=int, default=10)
    evaluate.add_argument(
        "--include-trained",
        action="store_true",
        help="also score the queries the live model trained on (left out by default)",
    )
    similar = add("similar", "products like this one (recommendations), itself excluded")
    similar.add_argument("product_id")
    similar.add_argument("--k", type=int, default=10)
    similar.add_argument("--category")
    similar.add_argument("--max-price", type=float)
    _narrowing_flags(similar)
    serve = add("serve", "serve the HTTP API and the search page from the live release", False)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed)")
    serve.add_argument(
        "--workers", type=int, help="server processes sharing the port (default: one per core)"
    )
    serve.add_argument(
        "--threads",
        type=int,
        help="searches each process runs at once (default: cores/workers, at least 2)",
    )
    serve.add_argument(
        "--currency", help="ISO 4217 code of the catalog's prices (default: $MM_CURRENCY, else USD)"
    )
    add("status", "what is live")
    quarantine = add("quarantine", "quarantined rows with their reasons")
    quarantine.add_argument("--drop")
    rollback = add("rollback", "make an earlier release live again")
    rollback.add_argument("version", nargs="?")
    add("rebuild", "rebuild a damaged warehouse from the drops in the landing folder")
    ui = add("ui", "open the Dagster UI on this MM_HOME", json_flag=False)
    ui.add_argument("--port", type=int, default=3000)
    return parser


def dispatch(args, layout: HomeLayout) -> dict | None:
    if args.command == "demo":
        return command_demo(layout)
    if args.command == "ingest":
        return command_ingest(layout, args.path)
    if args.command == "run":
        return command_run(layout, force=args.force, retrain=args.retrain)
    if args.command == "rebuild":
        return command_rebuild(layout)
    if args.command == "search":
        return command_search(layout, args)
    if args.command == "evaluate":
        return command_evaluate(layout, args)
    if args.command == "similar":
        return command_similar(layout, args)
    if args.command == "serve":
        command_serve(layout, args, sys.__stdout__ or sys.stderr)
    if args.command == "status":
        return command_status(layout)
    if args.command == "quarantine":
        return command_quarantine(layout, args.drop)
    if args.command == "rollback":
        return command_rollback(layout, args.version)
    if args.command == "ui":
        command_ui(layout, args.port)
    return None


def _layout_for(command: str) -> HomeLayout:
    """The home's layout; a command that only reads refuses a folder that holds no home
    instead of creating an empty one there."""
    root = mm_home_from_env()
    if command in READING_COMMANDS and not (root / "landing").is_dir():
        where = "MM_HOME" if os.environ.get("MM_HOME") else "MM_HOME is not set: ./mm_home"
        raise UserError(
            f"no home at {root} ({where}); set MM_HOME to your home, or make one with "
            "`mmsearch ingest PATH` or `mmsearch demo`"
        )
    return home()


def _usage_error(args) -> str | None:
    """An argument refused before anything is read, or None."""
    if args.command in ("search", "similar") and args.max_price is not None:
        if not math.isfinite(args.max_price) or args.max_price < 0:
            return "--max-price must be a number >= 0"
    if args.command in ("search", "similar"):
        try:
            _filters(args)
        except ValueError as error:
            return f"--filter: {error}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["MM_LOG_LEVEL"] = "DEBUG" if args.verbose > 1 else "INFO"
    if not getattr(args, "json", False):
        enable_progress_bars()  # only when stderr is a terminal
    refused = _usage_error(args)
    if refused:
        print(f"mmsearch {args.command}: {refused}", file=sys.stderr)
        return EXIT_USAGE
    real_stdout = sys.stdout
    layout = None
    try:
        # Libraries print progress to stdout; only our result may go there.
        with contextlib.redirect_stdout(sys.stderr):
            layout = _layout_for(args.command)
            result = dispatch(args, layout)
    except KeyboardInterrupt:
        print("mmsearch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # one line for the user; --debug for the traceback
        if args.debug:
            traceback.print_exc()
        print(f"mmsearch {args.command}: {_failure_line(error, layout)}", file=sys.stderr)
        return EXIT_FAILED
    if result is None:
        return 0
    try:
        if getattr(args, "json", False):
            real_stdout.write(json.dumps(_json_safe(result), default=str, allow_nan=False) + "\n")
        else:
            with contextlib.redirect_stdout(real_stdout):
                _print_human(args.command, result)
        real_stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`| head`): end as a Unix tool killed by SIGPIPE does, and
        # point stdout at /dev/null so the flush at exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), real_stdout.fileno())
        return EXIT_BROKEN_PIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
