"""What reading a drop's products.csv costs per row, at two sizes, beside pandas' C reader.

    .venv/bin/python benchmarks/drop_reading.py [--sizes 100000 400000] [--broken-share 0.01]

A products.csv of each size is generated (ids, titles, a quoted description holding a comma,
prices, image paths and two attribute columns) and read by `read_products`, what ingestion runs:
strict quoting, a row whose quoting cannot be read quarantined and reading restarted on the next
line, extra columns gathered into each row's attributes JSON. Printed: seconds per 1,000 rows,
the growth exponent between the sizes (1.0 is linear), and the same file read by
`pandas.read_csv(dtype=str)` as the baseline (it neither quarantines rows nor builds attributes).
Then the same files with `--broken-share` of the rows opening a quote they never close.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import pandas as pd

from mmsearch.catalog.drops import READ_ERROR, read_products


def write_products(folder: Path, rows: int, broken_share: float) -> Path:
    """A drop folder whose products.csv has `rows` rows, every 1/`broken_share`-th with a
    title that opens a quote it never closes."""
    folder.mkdir(parents=True, exist_ok=True)
    every = round(1 / broken_share) if broken_share else 0
    lines = ["product_id,title,description,price,image_path,color,size"]
    for i in range(rows):
        title = f'"Red mug {i}' if every and i % every == every - 1 else f"Red mug {i}"
        lines.append(f'p{i},{title},"A mug, big",{i % 50}.5,i/{i}.jpg,red,M')
    (folder / "products.csv").write_text("\n".join(lines) + "\n")
    return folder


def seconds(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def measure(folder: Path, rows: int, broken_share: float) -> dict:
    drop = write_products(folder / f"drop-{rows}-{broken_share}", rows, broken_share)
    frame = read_products(drop)
    quarantined = int(frame[READ_ERROR].notna().sum()) if READ_ERROR in frame else 0
    assert len(frame) == rows  # every row accounted for
    ours = min(seconds(lambda: read_products(drop)) for _ in range(3))
    baseline = min(
        seconds(lambda: pd.read_csv(drop / "products.csv", dtype=str, on_bad_lines="skip"))
        for _ in range(3)
    )
    return {
        "rows": rows,
        "broken": quarantined,
        "read_products s/1k": ours / rows * 1000,
        "pandas read_csv s/1k (baseline)": baseline / rows * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[100_000, 400_000])
    parser.add_argument("--broken-share", type=float, default=0.01)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drop-reading-") as folder:
        for share in (0.0, args.broken_share):
            table = pd.DataFrame([measure(Path(folder), n, share) for n in args.sizes])
            small, large = table.iloc[0], table.iloc[1]
            exponent = math.log(
                large["read_products s/1k"]
                * large["rows"]
                / (small["read_products s/1k"] * small["rows"])
            ) / math.log(large["rows"] / small["rows"])
            print(f"broken share {share:g}: growth exponent of read_products {exponent:.2f}")
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"), flush=True)


if __name__ == "__main__":
    main()
