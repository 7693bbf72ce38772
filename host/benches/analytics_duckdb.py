"""DuckDB in-process on the analytics benchmark's order lines (host/benches/figures.rs).

Usage: python3 analytics_duckdb.py LINEITEM.CSV SAMPLES. Loads the CSV into an in-memory table
with the types roam's columnar table declares, then runs the two reports of the example module
agents/lineitem-report SAMPLES times each. Prints one JSON object: the load's seconds, and per
report the median seconds of a query and its rows (decimals as exact text)."""

import decimal
import json
import statistics
import sys
import time

import duckdb

REVENUE = """SELECT sum(l_extendedprice * l_discount) FROM lineitem
WHERE l_shipdate >= date '1994-01-01' AND l_shipdate < date '1994-01-01' + interval '1' year
  AND l_discount BETWEEN 0.06 - 0.01 AND 0.06 + 0.01 AND l_quantity < 24"""

SUMMARY = """SELECT l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice),
  sum(l_extendedprice * (1 - l_discount)), sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)),
  avg(l_quantity), avg(l_extendedprice), avg(l_discount), count(*)
FROM lineitem WHERE l_shipdate <= date '1998-12-01' - interval '90' day
GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus"""

COLUMNS = {
    "l_orderkey": "BIGINT",
    "l_quantity": "BIGINT",
    "l_extendedprice": "DECIMAL(15,2)",
    "l_discount": "DECIMAL(15,2)",
    "l_tax": "DECIMAL(15,2)",
    "l_returnflag": "VARCHAR",
    "l_linestatus": "VARCHAR",
    "l_shipdate": "DATE",
}


def cell(v):
    return str(v) if isinstance(v, decimal.Decimal) else v


def measure(con, sql, samples):
    times, rows = [], []
    for _ in range(samples):
        start = time.perf_counter()
        rows = con.execute(sql).fetchall()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "rows": [[cell(v) for v in row] for row in rows]}


def main():
    csv, samples = sys.argv[1], int(sys.argv[2])
    con = duckdb.connect()
    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in COLUMNS.items()) + "}"
    path = csv.replace("'", "''")
    start = time.perf_counter()
    con.execute(f"CREATE TABLE lineitem AS SELECT * FROM read_csv('{path}', header = true, columns = {columns})")
    load_s = time.perf_counter() - start
    print(json.dumps({
        "load_s": load_s,
        "revenue": measure(con, REVENUE, samples),
        "summary": measure(con, SUMMARY, samples),
    }))


main()
