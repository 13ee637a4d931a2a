"""The `mmsearch` commands of docs/interface.md, run as real processes against a real MM_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import cli_json, run_cli
from helpers import picture, png_bytes, run_together, write_drop

pytestmark = pytest.mark.slow


def test_run_reports_assets_rows_model_and_index(built_home):
    _, run = built_home
    assert run["run_id"] and run["model_version"].startswith("model-")
    assert {
        "clean_products",
        "encoder_features",
        "fusion_model",
        "product_index",
        "search_evaluation",
    } <= set(run["assets"])
    assert all(isinstance(a["seconds"], float) for a in run["assets"].values())
    # Where the encoding ran: in this process by default (a Ray cluster with MM_RAY_ADDRESS).
    assert run["assets"]["encoder_features"]["engine"] == "in_process"
    assert run["assets"]["encoder_features"]["workers"] == 1
    rows = run["rows"]
    assert rows["read"] == rows["live"] + rows["replaced"] + rows["quarantined"] + rows["deleted"]
    assert rows["quarantined"] >= 1 and run["index_size"] == rows["live"]


def test_run_on_an_unchanged_catalog_does_nothing(built_home):
    home, first = built_home
    again = cli_json(home, "run")
    assert again["assets"] == {} and again["model_version"] == first["model_version"]


def test_text_search_answers_from_the_live_index_with_filters(built_home, sample_drop):
    home, run = built_home
    result = cli_json(home, "search", "--text", "red t-shirt", "--k", "5")
    assert result["model_version"] == run["model_version"]
    assert len(result["results"]) == 5
    scores = [hit["score"] for hit in result["results"]]
    assert scores == sorted(scores, reverse=True)
    assert {"product_id", "score", "title", "category", "price"} <= set(result["results"][0])
    category = result["results"][0]["category"]
    filtered = cli_json(
        home, "search", "--text", "gift", "--category", category, "--max-price", "80"
    )
    assert filtered["results"]
    assert all(h["category"] == category and h["price"] <= 80 for h in filtered["results"])


def test_image_search_finds_the_product_of_that_image(built_home, sample_drop):
    home, _ = built_home
    status = cli_json(home, "status")
    assert status["products"] > 50
    queries = [
        json.loads(line) for line in (sample_drop / "queries.jsonl").read_text().splitlines()
    ]
    image_query = next(q for q in queries if q["kind"] == "image")
    target = max(image_query["relevant"], key=image_query["relevant"].get)
    result = cli_json(
        home, "search", "--image", str(sample_drop / image_query["image_path"]), "--k", "10"
    )
    assert target in [hit["product_id"] for hit in result["results"]]


def test_image_plus_text_search_answers(built_home, sample_drop):
    home, _ = built_home
    queries = [
        json.loads(line) for line in (sample_drop / "queries.jsonl").read_text().splitlines()
    ]
    both = next(q for q in queries if q["kind"] == "image+text")
    result = cli_json(
        home,
        "search",
        "--image",
        str(sample_drop / both["image_path"]),
        "--text",
        both["text"],
        "--k",
        "3",
    )
    assert len(result["results"]) == 3


def test_evaluate_scores_a_labeled_query_file(built_home, sample_drop):
    home, _ = built_home
    result = cli_json(
        home, "evaluate", "--queries", str(sample_drop / "queries.jsonl"), "--include-trained"
    )
    overall = result["overall"]
    assert set(overall) == {"n", "recall@1", "recall@10", "mrr", "ndcg@10"}
    assert overall["n"] > 20 and 0.2 < overall["mrr"] <= 1
    assert {"text", "image", "image+text"} <= set(result["by_kind"])
    assert set(result["retrievers"]) == {"fused", "text", "image", "lexical"}
    assert "image" not in result["retrievers"]["text"]["by_kind"]
    assert result["significance"]["overall"]["best_retriever"] in result["retrievers"]


def test_evaluate_counts_and_names_the_lines_it_could_not_score(built_home, sample_drop, tmp_path):
    home, _ = built_home
    lines = (sample_drop / "queries.jsonl").read_text().splitlines()
    good = [line for line in lines if "image_path" not in json.loads(line)][:4]
    (tmp_path / "not-a-photo.jpg").write_text("hello")
    bad = [
        '{"query_id": "q-photo", "image_path": "not-a-photo.jpg", "relevant": ["p1"]}',
        "{not json",
        '["a list"]',
        '{"text": "red mug", "relevant": ["p1"]}',
        '{"query_id": "q-grades", "text": "red mug", "relevant": {"p1": "high"}}',
        '{"query_id": "q-empty", "relevant": ["p1"]}',
        '{"query_id": "q-both", "text": "red mug", "image_path": "gone.jpg", "relevant": ["p1"]}',
    ]
    query_file = tmp_path / "queries.jsonl"
    query_file.write_text("\n".join([*good, *bad]) + "\n")
    result = cli_json(home, "evaluate", "--queries", str(query_file), "--include-trained")
    queries = result["queries"]
    # Four good lines and the query whose photo is gone but whose text is scored alone.
    assert (queries["scored"], queries["skipped"]) == (5, 6)
    # In file order, whichever reading found the problem.
    assert [line["line"] for line in queries["unread_lines"]] == [5, 6, 7, 8, 9, 10, 11]
    unread = {line["line"]: (line["why"], line["scored"]) for line in queries["unread_lines"]}
    assert unread[5][0].startswith("image_path 'not-a-photo.jpg': ") and not unread[5][1]
    assert unread[6][0].startswith("not JSON") and unread[7][0] == "not a JSON object"
    assert unread[8][0] == "no query_id" and unread[9][0].startswith("relevant is missing")
    assert unread[10][0] == "neither text nor image_path"
    assert unread[11][0].startswith("image_path 'gone.jpg': ") and unread[11][1]
    shown = run_cli(home, "evaluate", "--queries", str(query_file), "--include-trained").stdout
    assert "; 6 lines skipped):" in shown
    assert "line 11: image_path 'gone.jpg': " in shown and "scored by its text alone" in shown


def test_similar_leaves_out_the_product_and_names_unknown_ids(built_home):
    home, _ = built_home
    first = cli_json(home, "search", "--text", "blue", "--k", "1")["results"][0]
    similar = cli_json(home, "similar", first["product_id"], "--k", "5")
    assert similar["product_id"] == first["product_id"] and len(similar["results"]) == 5
    # The search results' objects, `matched` included (no query text: nothing matched).
    assert all(set(first) <= set(hit) and hit["matched"] == {} for hit in similar["results"])
    assert first["product_id"] not in {r["product_id"] for r in similar["results"]}
    same_category = cli_json(home, "similar", first["product_id"], "--category", first["category"])[
        "results"
    ]
    assert same_category and {r["category"] for r in same_category} == {first["category"]}
    unknown = run_cli(home, "similar", "no-such-id", check=False)
    assert unknown.returncode != 0
    assert "no live product has id 'no-such-id'" in unknown.stderr.strip().splitlines()[-1]


def test_an_unknown_category_says_so_and_lists_the_known_ones(built_home):
    home, _ = built_home
    known = cli_json(home, "search", "--text", "blue", "--k", "1")["results"][0]["category"]
    result = run_cli(home, "search", "--text", "blue", "--category", "nosuch", check=False)
    message = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and "'nosuch'" in message and known in message


def test_a_drops_colour_column_is_a_filter_with_facet_counts(built_home):
    home, _ = built_home
    every = cli_json(home, "search", "--text", "t-shirt", "--k", "5")["facets"]
    assert {"color", "pattern", "material"} <= set(every) and len(every["color"]) > 1
    red = cli_json(home, "search", "--text", "t-shirt", "--filter", "Color=RED", "--k", "5")
    assert red["results"] and list(red["facets"]["color"]) == ["red"]
    # Every candidate is red: as many as the candidates' categories count.
    assert red["facets"]["color"]["red"] == sum(red["facets"]["categories"].values())
    # The sample has no variant groups: each result is its own, with no other variants.
    assert all(hit["group_id"] is None and hit["variants"] == [] for hit in red["results"])


def test_commands_print_tables_for_people_and_name_unknown_drops(built_home, sample_drop):
    home, run = built_home
    status = run_cli(home, "status").stdout
    assert status.startswith(f"{run['index_size']:,} live products") and "{" not in status
    assert "quarantined" in status.splitlines()[1] and "sample" in status
    evaluate = run_cli(home, "evaluate", "--queries", str(sample_drop / "queries.jsonl")).stdout
    assert evaluate.startswith("MRR on ") and "ranker" in evaluate and "{" not in evaluate
    quarantine = run_cli(home, "quarantine").stdout.splitlines()
    assert quarantine[0].split() == ["drop", "row", "product_id", "reason_code", "reason"]
    assert len(quarantine) == 1 + run["rows"]["quarantined"]
    unknown = run_cli(home, "quarantine", "--drop", "nosuch", check=False)
    message = unknown.stderr.strip().splitlines()[-1]
    assert unknown.returncode != 0 and "'nosuch'" in message and "drops: sample" in message
    nosuch = run_cli(home, "search", "--text", "blue", "--category", "nosuch", check=False)
    assert nosuch.returncode != 0 and "'nosuch'" in nosuch.stderr.strip().splitlines()[-1]


def test_evaluate_leaves_out_the_queries_the_model_trained_on(built_home, sample_drop):
    home, _ = built_home
    query_file = str(sample_drop / "queries.jsonl")
    held_out = cli_json(home, "evaluate", "--queries", query_file)["queries"]
    everything = cli_json(home, "evaluate", "--queries", query_file, "--include-trained")
    in_file = sum(1 for line in (sample_drop / "queries.jsonl").open() if line.strip())
    assert held_out["in_file"] == everything["queries"]["in_file"] == in_file
    assert 0 < held_out["trained_on"] < in_file
    assert held_out["scored"] == in_file - held_out["trained_on"]
    assert everything["queries"]["scored"] == everything["overall"]["n"] == in_file


def test_status_and_quarantine_account_for_every_row(built_home):
    home, run = built_home
    status = cli_json(home, "status")
    drop = status["drops"][0]
    assert drop["rows"] == drop["live"] + drop["replaced"] + drop["quarantined"] + drop["deleted"]
    assert status["quarantined"] == run["rows"]["quarantined"]
    assert status["index"]["size"] == run["index_size"]
    # Each index of the release says how it was built: a small catalog scans every vector.
    retrievers = status["index"]["retriever_tuning"]
    assert set(retrievers) == {"text", "image"}
    assert all(tuning["kind"] == "flat" and tuning["nprobe"] == 0 for tuning in retrievers.values())
    rows = cli_json(home, "quarantine", "--drop", drop["name"])["rows"]
    assert len(rows) == status["quarantined"]
    assert all({"drop", "row", "product_id", "reason"} <= set(r) and r["reason"] for r in rows)


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(built_home):
    home, _ = built_home
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"MM_HOME": str(home)}
    for extra in ((), ("--json",)):
        # As `mmsearch search ... | head -0`: the reader is gone before the answer is written.
        read, write = os.pipe()
        os.close(read)
        with os.fdopen(write, "wb") as closed_pipe:
            finished = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mm_cli",
                    "search",
                    "--text",
                    "t-shirt",
                    "--k",
                    "20",
                    *extra,
                ],
                env=env,
                stdout=closed_pipe,
                stderr=subprocess.PIPE,
                text=True,
                timeout=600,
            )
        assert finished.returncode == 141, finished.stderr
        assert "Traceback" not in finished.stderr and "BrokenPipe" not in finished.stderr


def test_a_failed_run_is_one_line_and_the_next_run_names_it_instead_of_nothing_to_do(tmp_path):
    home = tmp_path / "home"
    empty = tmp_path / "empty-shop"
    empty.mkdir()
    (empty / "products.csv").write_text("product_id,title\n")  # a header and no product
    run_cli(home, "ingest", str(empty))
    first = run_cli(home, "run", check=False)
    again = run_cli(home, "run", check=False)
    for result in (first, again):
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert "need at least 2 live products" in lines[0]
    assert "nothing to do, every asset is up to date" not in again.stdout


def test_bad_input_gives_one_line_and_non_zero_exit(built_home, tmp_path):
    home, _ = built_home
    missing = run_cli(home, "search", check=False)
    assert missing.returncode != 0 and "--text" in missing.stderr.strip().splitlines()[-1]
    no_file = run_cli(home, "evaluate", "--queries", str(tmp_path / "nope.jsonl"), check=False)
    assert no_file.returncode != 0 and "does not exist" in no_file.stderr.strip().splitlines()[-1]


def test_unreadable_drop_is_rejected_by_name_while_good_drop_goes_live(tmp_path):
    home = tmp_path / "home"
    good = write_drop(
        tmp_path / "good-drop",
        [
            {
                "product_id": f"p{i}",
                "title": f"Product {i} mug",
                "category": "mug",
                "price": str(i),
                "image_path": f"img/{i}.png",
            }
            for i in range(12)
        ],
        {f"img/{i}.png": png_bytes(picture((20 * i, 90, 200 - 10 * i), seed=i)) for i in range(12)},
    )
    broken = tmp_path / "broken-drop"
    broken.mkdir()
    (broken / "products.csv").write_text("sku;name\n1;x\n")
    run_cli(home, "ingest", str(good))
    (home / "landing" / "broken-drop").mkdir(parents=True)
    (home / "landing" / "broken-drop" / "products.csv").write_text("sku;name\n1;x\n")
    ran = run_cli(home, "run", "--json")
    run = json.loads(ran.stdout)
    assert run["index_size"] == 12
    assert [d["name"] for d in run["rejected_drops"]] == ["broken-drop"]
    reason = run["rejected_drops"][0]["message"]
    assert "lacks required column" in reason
    # Said once, in the command's own warning line (no Dagster ERROR line beside it).
    assert ran.stderr.count("lacks required column") == 1, ran.stderr
    assert ran.stderr.strip().splitlines()[-1] == f"warning: {reason}"
    assert "lacks required column" not in run_cli(home, "run").stderr  # said already
    status = cli_json(home, "status")
    states = {d["name"]: d["status"] for d in status["drops"]}
    assert states == {"good-drop": "accepted", "broken-drop": "rejected"}
    assert f"broken-drop: {reason}" in run_cli(home, "status").stdout.splitlines()
    assert cli_json(home, "search", "--text", "mug")["results"]


def test_ingest_refuses_a_folder_without_products_file(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli(tmp_path / "home", "ingest", str(tmp_path / "empty"), check=False)
    assert (
        result.returncode != 0
        and "'empty'" in result.stderr
        and "no products file" in result.stderr
    )


def test_ingest_refuses_a_csv_with_a_wrong_header_and_lands_nothing(tmp_path):
    drop = tmp_path / "wrong-header"
    drop.mkdir()
    (drop / "products.csv").write_text("sku,name,price\n1,Red mug,4\n")
    home = tmp_path / "home"
    refused = run_cli(home, "ingest", str(drop), check=False)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 1 and len(lines) == 1
    assert "'wrong-header'" in lines[0] and "lacks required column(s) product_id, title" in lines[0]
    assert not any((home / "landing").iterdir())


def test_read_commands_on_a_folder_without_a_home_say_so_and_create_nothing(tmp_path):
    home = tmp_path / "not-a-home"
    for command in (("status",), ("search", "--text", "mug"), ("quarantine",), ("rebuild",)):
        refused = run_cli(home, *command, check=False)
        line = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 1 and f"no home at {home}" in line, refused.stderr
    assert not home.exists()


def test_bad_search_arguments_are_refused_before_anything_loads(built_home, tmp_path):
    home, _ = built_home
    negative = run_cli(home, "search", "--text", "mug", "--max-price", "-5", check=False)
    assert negative.returncode == 2
    assert negative.stderr.strip() == "mmsearch search: --max-price must be a number >= 0"
    similar = run_cli(home, "similar", "p1", "--max-price", "-5", check=False)
    assert similar.returncode == 2 and "--max-price" in similar.stderr
    empty = run_cli(home, "search", "--text", "", check=False)
    blank = run_cli(home, "search", "--text", "   ", check=False)
    assert empty.returncode == blank.returncode == 1
    assert empty.stderr == blank.stderr
    assert (
        empty.stderr.strip() == "mmsearch search: give --text, --image, or both (--text was blank)"
    )
    missing = tmp_path / "no-such.png"
    no_image = run_cli(home, "search", "--image", str(missing), check=False)
    assert no_image.returncode == 1
    assert no_image.stderr.strip() == f"mmsearch search: --image {missing}: no such file"


def test_the_gate_stores_no_figures_when_it_compared_nothing(built_home):
    from dagster import DagsterEventType, DagsterInstance
    from dagster._core.instance.ref import InstanceRef

    from mmsearch.index.registry import registry_for
    from mmsearch.settings import HomeLayout

    home, run = built_home
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster")))
    [record] = [
        r
        for run_id in run["run_ids"]
        for r in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
        if r.dagster_event.event_specific_data.check_name == "promotion_gate"
    ]
    gate = record.dagster_event.event_specific_data
    assert gate.passed and gate.description == "promoted: nothing live yet"
    assert {"candidate_mrr", "live_mrr", "p_value"}.isdisjoint(gate.metadata)
    assert gate.metadata["gate_queries"].value == 0
    manifest = registry_for(HomeLayout(home)).live().manifest
    assert manifest["gate"] == {
        "promoted": True,
        "reason": "promoted: nothing live yet",
        "queries": 0,
        "source": "",
    }


def test_demo_json_is_strict_json(tmp_path):
    from mmsearch.sample import write_sample_catalog

    home = tmp_path / "home"
    # A small sample in the demo's place: `demo` writes its own only when absent.
    write_sample_catalog(home / "landing" / "sample-catalog", n_products=60, seed=4)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    demo = json.loads(run_cli(home, "demo", "--json").stdout, parse_constant=refuse)
    assert demo["index_size"] > 40 and demo["evaluation"] and demo["sample_searches"]
    ranker = [row for row in demo["evaluation"] if row["method"] == "ranker"]
    retrievers = [row for row in demo["evaluation"] if row["method"] != "ranker"]
    assert all(0 <= row["mrr"] <= 1 for row in ranker)
    assert all(row["p_value"] is None for row in retrievers)  # no test of a retriever itself


def test_rollback_makes_the_earlier_release_live_again(tmp_path):
    home = tmp_path / "home"
    drop = write_drop(
        tmp_path / "drop",
        [
            {"product_id": f"p{i}", "title": f"Lamp {i}", "image_path": f"i/{i}.png"}
            for i in range(12)
        ],
        {f"i/{i}.png": png_bytes(picture((200, 20 * i, 40), seed=i)) for i in range(12)},
    )
    run_cli(home, "ingest", str(drop))
    first = cli_json(home, "run")
    second = cli_json(home, "run", "--force")
    assert second["model_version"] != first["model_version"]
    # Two more products (below the retrain threshold): the second model's index grows to 14.
    more = write_drop(
        tmp_path / "more",
        [
            {"product_id": f"p{i}", "title": f"Desk {i}", "image_path": f"i/{i}.png"}
            for i in (12, 13)
        ],
        {f"i/{i}.png": png_bytes(picture((30, 200, 10 * i), seed=i)) for i in (12, 13)},
    )
    run_cli(home, "ingest", str(more))
    grown = cli_json(home, "run")
    assert (grown["model_version"], grown["index_size"]) == (second["model_version"], 14)
    # Back to the first model, whose only release predates the new products ...
    rolled = cli_json(home, "rollback", first["model_version"])
    assert rolled["model_version"] == first["model_version"]
    assert cli_json(home, "status")["index"]["size"] == 12
    assert cli_json(home, "search", "--text", "lamp")["model_version"] == first["model_version"]
    # ... and the next run brings that model's index up to date with the live catalog.
    caught_up = cli_json(home, "run")
    assert (caught_up["model_version"], caught_up["index_size"]) == (first["model_version"], 14)
    assert "candidate_release" in caught_up["assets"] and "fusion_model" not in caught_up["assets"]
    hits = cli_json(home, "search", "--text", "Desk 13", "--k", "3")["results"]
    assert "p13" in [hit["product_id"] for hit in hits]
    cli_json(home, "rollback", second["model_version"])
    assert cli_json(home, "status")["model_version"] == second["model_version"]
    unknown = run_cli(home, "rollback", "model-nope", check=False)
    assert unknown.returncode != 0 and "model-nope" in unknown.stderr


def test_a_catalog_without_photos_is_searched_by_text_and_refuses_photo_queries(tmp_path):
    home = tmp_path / "home"
    rows = [
        {"product_id": f"t{i}", "title": f"{colour} wool scarf {i}", "category": "scarf"}
        for i, colour in enumerate(["red", "blue", "green", "grey", "black", "white"] * 3)
    ]
    run_cli(home, "ingest", str(write_drop(tmp_path / "text-only", rows)))
    run = cli_json(home, "run")
    assert run["index_size"] == len(rows)
    hits = cli_json(home, "search", "--text", "green wool scarf", "--k", "3")["results"]
    assert hits and "green" in hits[0]["title"]
    photo = tmp_path / "photo.png"
    photo.write_bytes(png_bytes(picture()))
    refused = run_cli(home, "search", "--image", str(photo), check=False)
    assert refused.returncode != 0
    assert "no live product has a photo" in refused.stderr.strip().splitlines()[-1]


def _in_terminal(home, *args: str) -> str:
    """Run `mmsearch` with stdout and stderr on a pseudo-terminal, as a person would; returns
    everything it wrote there."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"MM_HOME": str(home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mm_cli", *args], stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert process.wait(timeout=900) == 0
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_run_at_a_terminal_shows_progress_and_prints_under_40_lines(tmp_path, sample_drop):
    home = tmp_path / "home"
    run_cli(home, "ingest", str(sample_drop))
    output = _in_terminal(home, "run")
    # Bars redraw in place with carriage returns; what stays on screen are the lines.
    assert "encoding images" in output and "encoding texts" in output
    assert "training" in output and "epoch" in output and "validation_loss" in output
    lines = [line for line in output.replace("\r\n", "\n").split("\n") if line.strip()]
    printed = [line.rsplit("\r", 1)[-1] for line in lines]
    assert len(lines) < 40, "\n".join(printed)
    assert (
        " run" in printed[0]
        and "(last " in printed[0]
        and any(p.startswith("live model") for p in printed)
    )
    # Sentences, not a Python dict or every asset's timing on one line.
    result_lines = [p for p in printed if p.startswith(("rows: ", "live model")) or "(last " in p]
    assert all("{" not in p and len(p) < 200 for p in result_lines), result_lines
    assert any(p.startswith("rows: ") and " read: " in p and " live, " in p for p in printed)
    # Piped (not a terminal), the same command shows no bar.
    piped = run_cli(home, "run", "--retrain")
    assert "epoch" not in piped.stderr and "%|" not in piped.stderr


def test_result_lines_show_brand_and_the_attributes_that_matched(built_home):
    home, _ = built_home
    hits = cli_json(home, "search", "--text", "red t-shirt", "--k", "5")["results"]
    assert any(hit["matched"].get("category") == "t-shirt" for hit in hits), hits
    for hit in hits:
        assert all(value in ("red", "t-shirt") for value in hit["matched"].values()), hit
    text = run_cli(home, "search", "--text", "red t-shirt", "--k", "5").stdout.splitlines()
    first = hits[0]
    assert text[0].startswith("  1. ") and first["product_id"] in text[0]
    if first["brand"]:
        assert f"({first['brand']})" in text[0]
    if first["matched"]:
        assert "matched " + ", ".join(f"{k}={v}" for k, v in first["matched"].items()) in text[0]


def _lamps(folder, ids):
    return write_drop(
        folder,
        [{"product_id": f"p{i}", "title": f"Lamp {i}", "image_path": f"i/{i}.png"} for i in ids],
        {f"i/{i}.png": png_bytes(picture((200, 20 * i, 40), seed=i)) for i in ids},
    )


def test_two_runs_started_together_ingest_a_drop_once_and_the_daemon_would_skip_it(tmp_path):
    import os
    import sys

    from dagster import DagsterInstance, RunRequest
    from dagster._core.instance.ref import InstanceRef
    from dagster._core.test_utils import in_process_test_workspace
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._daemon.sensor import fetch_existing_runs

    from mm_assets.partitions import ingest_run_key

    home = tmp_path / "home"
    run_cli(home, "ingest", str(_lamps(tmp_path / "drop", range(12))))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"} | {"MM_HOME": str(home)}
    results = run_together([sys.executable, "-m", "mm_cli", "run", "--json"], 2, env)
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    summaries = [json.loads(out) for _, out, _ in results]
    # One of them ingested the drop and built the index; the other found nothing left to do.
    assert sorted(len(s["ingested_drops"]) for s in summaries) == [0, 1]
    assert {s["index_size"] for s in summaries} == {12}
    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(home / "dagster")))
    ingest_runs = [r for r in instance.get_runs() if r.job_name == "ingest_drop"]
    assert len(ingest_runs) == 1

    # A daemon whose drop sensor saw the drop before the command line registered it submits its
    # request afterwards: the daemon's own lookup finds the command line's run under the request's
    # run key, so it skips the request instead of ingesting again.
    (drop,) = [s["ingested_drops"][0] for s in summaries if s["ingested_drops"]]
    request = RunRequest(partition_key=drop, run_key=ingest_run_key(drop))
    code = LoadableTargetOrigin(module_name="mm_assets.definitions", attribute="defs")
    with in_process_test_workspace(instance, code) as workspace:
        entry = next(iter(workspace.get_code_location_entries().values()))
        repository = entry.code_location.get_repository("__repository__")
        sensor = repository.get_sensor("catalog_drop_sensor")
        existing = fetch_existing_runs(instance, sensor, [request])
    assert {key: run.run_id for key, run in existing.items()} == {
        ingest_run_key(drop): ingest_runs[0].run_id
    }


def test_a_damaged_live_release_is_refused_by_name_and_search_answers_from_the_one_before(
    tmp_path,
):
    from mmsearch.index.registry import registry_for
    from mmsearch.settings import HomeLayout

    home = tmp_path / "home"
    run_cli(home, "ingest", str(_lamps(tmp_path / "drop", range(12))))
    first = cli_json(home, "run")
    run_cli(home, "ingest", str(_lamps(tmp_path / "more", range(12, 14))))
    second = cli_json(home, "run")
    assert (first["index_size"], second["index_size"]) == (12, 14)
    live = registry_for(HomeLayout(home)).live()
    vectors = live.folder / "index.faiss"  # the fused index, which also holds its vectors
    vectors.write_bytes(vectors.read_bytes()[:100])  # cut short, as by a full disk
    answer = run_cli(home, "search", "--text", "lamp", "--json")
    warning = answer.stderr.strip().splitlines()[-1]
    assert warning.startswith("warning: ") and str(vectors) in warning and "damaged" in warning
    result = json.loads(answer.stdout)
    assert result["index_version"] == first["index_version"] and "warning" in result
    assert {hit["product_id"] for hit in result["results"]} <= {f"p{i}" for i in range(12)}
