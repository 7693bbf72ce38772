//! Columnar tables (DataFusion): exact decimals, date and interval literals, read-only
//! statements, the call's deadline and memory, and a restart that does not convert again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use roam_abi::Value;
use roam_host::resources::{Attachment, ColumnType, ResourceError, Resources, Storage};

/// Every row of `sql` on the table `t` of `resources`.
fn rows(
    resources: &Resources,
    sql: &str,
    params: Vec<Value>,
    within: Duration,
) -> Result<Vec<Vec<Value>>, ResourceError> {
    let table = resources.get("t").ok_or_else(|| ResourceError::Sql("no table t".into()))?;
    let mut cursor = table.query(sql, params, Instant::now() + within)?;
    let mut out = Vec::new();
    while cursor.next_batch()?.is_some() {
        let batch = cursor.take_staged().unwrap_or_default();
        let decoded: Vec<Vec<Value>> =
            ciborium::from_reader(batch.as_slice()).map_err(|e| ResourceError::Sql(e.to_string()))?;
        out.extend(decoded);
    }
    Ok(out)
}

/// An order-lines table: `n` rows with discounts 0.00 to 0.10, and ship dates through 1993-1995.
fn lines(dir: &Path, n: usize) -> Result<std::path::PathBuf> {
    let mut csv = String::from("id,quantity,discount,price,shipdate,flag\n");
    for i in 0..n {
        let day = 1 + i % 28;
        let month = 1 + (i / 28) % 12;
        let year = 1993 + (i / 336) % 3;
        csv.push_str(&format!(
            "{i},{},0.{:02},{}.{:02},{year}-{month:02}-{day:02},{}\n",
            1 + i % 50,
            i % 11,
            900 + i % 100,
            i % 100,
            ["A", "N", "R"][i % 3]
        ));
    }
    let path = dir.join("lines.csv");
    std::fs::write(&path, csv)?;
    Ok(path)
}

fn declared() -> Result<BTreeMap<String, ColumnType>> {
    Ok(BTreeMap::from([
        ("discount".to_owned(), ColumnType::try_from("decimal(15,2)".to_owned()).map_err(anyhow::Error::msg)?),
        ("price".to_owned(), ColumnType::try_from("decimal(15,2)".to_owned()).map_err(anyhow::Error::msg)?),
        ("shipdate".to_owned(), ColumnType::Date),
    ]))
}

fn open(dir: &Path, csv: &Path, memory: usize) -> Result<Resources> {
    Ok(holding(dir, csv, memory, 0)?.0)
}

/// The table `t` of `csv`, with `budget` bytes to hold it in memory, once it is read from where
/// it will be read from.
fn holding(dir: &Path, csv: &Path, memory: usize, budget: usize) -> Result<(Resources, Storage)> {
    let mut resources = Resources::default();
    resources.hold_tables_in_memory(budget);
    resources.add_columnar_table("t", Attachment::Fastened, csv, dir, &declared()?, memory)?;
    let storage = settled(&resources, "t")?;
    Ok((resources, storage))
}

/// Where the table `name` is read from, once it is no longer being read into memory.
fn settled(resources: &Resources, name: &str) -> Result<Storage> {
    let table = resources.get(name).context("no such table")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match table.storage() {
            Some(Storage::Loading) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Some(storage) => return Ok(storage),
            None => bail!("{name} is not a columnar table"),
        }
    }
}

#[test]
fn decimals_are_exact_and_date_and_interval_literals_work() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = lines(dir.path(), 3_000)?;
    let t = open(dir.path(), &csv, 256 << 20)?;
    let within = Duration::from_secs(30);
    // 0.05, 0.06 and 0.07: three of every eleven rows. With doubles, 0.06 + 0.01 is just below
    // 0.07, and the rows at 0.07 would be lost without a word.
    let expected = (0..3_000).filter(|i| (5..=7).contains(&(i % 11))).count() as i64;
    let got = rows(&t, "SELECT count(*) FROM t WHERE discount BETWEEN 0.06 - 0.01 AND 0.06 + 0.01", vec![], within)?;
    ensure!(got == vec![vec![Value::Integer(expected)]], "{got:?}, expected {expected}");
    // A sum of decimals is a decimal, shown exactly.
    let cents: i64 = (0..3_000).map(|i| (900 + i % 100) * 100 + i % 100).sum();
    let got = rows(&t, "SELECT sum(price) FROM t", vec![], within)?;
    let want = format!("{}.{:02}", cents / 100, cents % 100);
    ensure!(got == vec![vec![Value::Text(want.clone())]], "{got:?}, expected {want}");
    // The analyst's dialect: date and interval literals.
    let expected = (0..3_000).filter(|i| 1993 + (i / 336) % 3 == 1994).count() as i64;
    let got = rows(
        &t,
        "SELECT count(*) FROM t WHERE shipdate >= date '1994-01-01' AND shipdate < date '1994-01-01' + interval '1' year",
        vec![],
        within,
    )?;
    ensure!(got == vec![vec![Value::Integer(expected)]], "{got:?}, expected {expected}");
    // Parameters as SQLite's `?1` and as `$1`, so that existing modules keep working.
    for sql in [
        "SELECT count(*) FROM t WHERE quantity >= ?1 AND flag = ?2",
        "SELECT count(*) FROM t WHERE quantity >= $1 AND flag = $2",
    ] {
        let got = rows(&t, sql, vec![Value::Integer(40), Value::Text("A".into())], within)?;
        let expected = (0..3_000).filter(|i| 1 + i % 50 >= 40 && i % 3 == 0).count() as i64;
        ensure!(got == vec![vec![Value::Integer(expected)]], "{sql}: {got:?}, expected {expected}");
    }
    Ok(())
}

#[test]
fn a_columnar_table_is_read_only_and_holds_only_itself() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = lines(dir.path(), 100)?;
    let t = open(dir.path(), &csv, 256 << 20)?;
    let secret = dir.path().join("secret.csv");
    std::fs::write(&secret, "a\n1\n")?;
    let (held, storage) = holding(dir.path(), &csv, 256 << 20, 64 << 20)?;
    ensure!(matches!(storage, Storage::Memory(_)), "{storage:?}");
    for (t, sql) in [&t, &held].into_iter().flat_map(|t| {
        [
            "CREATE TABLE x AS SELECT * FROM t".to_owned(),
            "INSERT INTO t SELECT * FROM t".to_owned(),
            "SET datafusion.execution.batch_size = 1".to_owned(),
            format!("COPY t TO '{}'", dir.path().join("out.csv").display()),
            format!("CREATE EXTERNAL TABLE s STORED AS CSV LOCATION '{}'", secret.display()),
            format!("SELECT * FROM '{}'", secret.display()),
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r".to_owned(),
        ]
        .map(|sql| (t, sql))
    }) {
        match rows(t, &sql, vec![], Duration::from_secs(30)) {
            Err(ResourceError::Sql(why)) => ensure!(!why.is_empty(), "{sql}"),
            other => bail!("{sql} was not refused: {other:?}"),
        }
    }
    ensure!(!dir.path().join("out.csv").exists());
    Ok(())
}

#[test]
fn a_statement_stops_at_the_deadline_and_at_the_memory_limit() -> Result<()> {
    stops_at_the_deadline_and_at_the_memory_limit(0)
}

#[test]
fn a_statement_on_a_table_held_in_memory_stops_at_the_deadline_and_at_the_memory_limit() -> Result<()> {
    stops_at_the_deadline_and_at_the_memory_limit(64 << 20)
}

/// The limits of a call, on a table with `budget` bytes to be held in memory. The sort runs
/// right after the cross join was stopped: had the join's work gone on after its deadline (on a
/// table in memory it never yields), it would hold the engine's threads and the sort would
/// wait for minutes.
fn stops_at_the_deadline_and_at_the_memory_limit(budget: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = lines(dir.path(), 20_000)?;
    // A cross join of 20,000 rows with itself, twice: far longer than the call may take.
    let (t, storage) = holding(dir.path(), &csv, 256 << 20, budget)?;
    let started = Instant::now();
    let huge = "SELECT count(*) FROM t a, t b, t c WHERE a.price + b.price > c.price";
    match rows(&t, huge, vec![], Duration::from_millis(500)) {
        Err(ResourceError::Deadline) => {}
        other => bail!("the cross join ended otherwise ({storage:?}): {other:?}"),
    }
    ensure!(started.elapsed() < Duration::from_secs(20), "stopped only after {:?}", started.elapsed());
    drop(t);
    // A sort of every row within 64 KiB of engine memory.
    let (small, storage) = holding(dir.path(), &csv, 64 << 10, budget)?;
    let sort = "SELECT id, flag, shipdate FROM t ORDER BY flag, shipdate DESC, id";
    match rows(&small, sort, vec![], Duration::from_secs(30)) {
        Err(ResourceError::Sql(why)) => ensure!(why.contains("limits.memory_mib"), "{why}"),
        other => bail!("the sort was not stopped ({storage:?}): {other:?}"),
    }
    Ok(())
}

#[test]
fn a_table_held_in_memory_answers_as_its_file_does_and_no_longer_reads_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = lines(dir.path(), 20_000)?;
    let sql = "SELECT flag, sum(price * discount), avg(quantity), min(shipdate), count(*) FROM t \
               WHERE shipdate >= date '1994-01-01' AND discount BETWEEN 0.06 - 0.01 AND 0.06 + 0.01 \
               AND quantity < ?1 GROUP BY flag ORDER BY flag";
    let within = Duration::from_secs(30);
    let (on_disk, storage) = holding(dir.path(), &csv, 256 << 20, 0)?;
    ensure!(matches!(storage, Storage::Disk(_)), "{storage:?}");
    let expected = rows(&on_disk, sql, vec![Value::Integer(24)], within)?;
    ensure!(expected.len() == 3, "{expected:?}");
    drop(on_disk);

    let (held, storage) = holding(dir.path(), &csv, 256 << 20, 64 << 20)?;
    let Storage::Memory(bytes) = storage else { bail!("not held in memory: {storage:?}") };
    ensure!(bytes > 20_000 * 8 && bytes <= 64 << 20, "{bytes} bytes");
    // From now on the copy answers: the file is not read again.
    std::fs::remove_file(dir.path().join("tables/t.parquet"))?;
    let got = rows(&held, sql, vec![Value::Integer(24)], within)?;
    ensure!(got == expected, "{got:?} from memory, {expected:?} from the file");
    Ok(())
}

#[test]
fn tables_share_the_memory_budget_and_one_that_does_not_fit_is_read_from_disk() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = lines(dir.path(), 20_000)?;
    let (_, storage) = holding(dir.path(), &csv, 256 << 20, 64 << 20)?;
    let Storage::Memory(one) = storage else { bail!("not held in memory: {storage:?}") };
    // Room for one table and a half: the first is held, the second not.
    let mut two = Resources::default();
    two.hold_tables_in_memory(one + one / 2);
    for name in ["t", "u"] {
        two.add_columnar_table(name, Attachment::Fastened, &csv, dir.path(), &declared()?, 256 << 20)?;
        settled(&two, name)?;
    }
    ensure!(settled(&two, "t")? == Storage::Memory(one), "{:?}", settled(&two, "t")?);
    match settled(&two, "u")? {
        Storage::Disk(why) => ensure!(why.contains("limits.table_memory_mib"), "{why}"),
        other => bail!("the second table is {other:?}"),
    }
    let got = rows(&two, "SELECT count(*) FROM t", vec![], Duration::from_secs(30))?;
    ensure!(got == vec![vec![Value::Integer(20_000)]], "{got:?}");
    Ok(())
}

#[test]
fn a_restart_reads_the_converted_table_without_converting_again() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let csv = lines(dir.path(), 1_000)?;
    drop(open(dir.path(), &csv, 256 << 20)?);
    let parquet = dir.path().join("tables/t.parquet");
    let made = std::fs::metadata(&parquet)?.modified()?;
    let t = open(dir.path(), &csv, 256 << 20)?;
    ensure!(std::fs::metadata(&parquet)?.modified()? == made, "the table was converted again");
    let got = rows(&t, "SELECT count(*) FROM t", vec![], Duration::from_secs(30))?;
    ensure!(got == vec![vec![Value::Integer(1_000)]], "{got:?}");
    Ok(())
}

#[test]
fn the_readmes_analytic_query_runs_on_a_columnar_table_as_written() -> Result<()> {
    let readme = std::fs::read_to_string(roam_tests::repo_root().join("README.md"))?;
    let start = readme.find("```sql\n").ok_or_else(|| anyhow::anyhow!("README has no sql block"))? + 7;
    let sql = &readme[start..start + readme[start..].find("```").unwrap_or(0)];
    let dir = tempfile::tempdir()?;
    let mut csv = String::from("l_returnflag,l_quantity,l_discount,l_shipdate\n");
    for i in 0..2_000 {
        let year = 1993 + (i / 3) % 3;
        csv.push_str(&format!(
            "{},{}.00,0.{:02},{year}-03-{:02}\n",
            ["A", "N", "R"][i % 3],
            1 + i % 50,
            i % 11,
            1 + i % 28
        ));
    }
    std::fs::write(dir.path().join("lineitem.csv"), csv)?;
    let columns = BTreeMap::from([
        ("l_quantity".to_owned(), ColumnType::try_from("decimal(15,2)".to_owned()).map_err(anyhow::Error::msg)?),
        ("l_discount".to_owned(), ColumnType::try_from("decimal(15,2)".to_owned()).map_err(anyhow::Error::msg)?),
        ("l_shipdate".to_owned(), ColumnType::Date),
    ]);
    let mut resources = Resources::default();
    let csv = dir.path().join("lineitem.csv");
    resources.add_columnar_table("lineitem", Attachment::Fastened, &csv, dir.path(), &columns, 256 << 20)?;
    let table = resources.get("lineitem").ok_or_else(|| anyhow::anyhow!("no table"))?;
    let mut cursor = table.query(sql, vec![], Instant::now() + Duration::from_secs(30))?;
    let mut groups = 0;
    while cursor.next_batch()?.is_some() {
        let batch: Vec<Vec<Value>> = ciborium::from_reader(cursor.take_staged().unwrap_or_default().as_slice())?;
        groups += batch.len();
    }
    // 1994's rows with discounts 0.05 to 0.07, in each of the three flags.
    ensure!(groups == 3, "{groups} groups");
    Ok(())
}

/// What `revenue` answers for the sample order lines, computed here in cents and hundredths.
fn revenue_natively(n: usize) -> String {
    let sum: i128 = (0..n)
        .map(roam_tests::lineitem::line)
        .filter(|l| l.year == 1994 && (5..=7).contains(&l.discount) && l.quantity < 24)
        .map(|l| l.price_cents as i128 * l.discount as i128)
        .sum();
    format!("{}.{:04}", sum / 10_000, sum % 10_000)
}

/// A host whose `lineitem` table holds `rows` lines, in the columnar engine.
fn lineitem_host(fx: &roam_tests::Fixture, rows: usize) -> Result<roam_tests::HostProcess> {
    let csv = fx.path().join("lineitem.csv");
    roam_tests::lineitem::write_csv(&csv, rows)?;
    let config = fx.write(
        "host.toml",
        format!(
            "trust = {:?}\n\n[[resources]]\nname = \"lineitem\"\ntype = \"table\"\nengine = \"columnar\"\nsource = {:?}\n\
             columns = {{ l_extendedprice = \"decimal(15,2)\", l_discount = \"decimal(15,2)\", l_tax = \
             \"decimal(15,2)\", l_shipdate = \"date\" }}\n",
            fx.trust_dir().display().to_string(),
            csv.display().to_string()
        ),
    )?;
    fx.host(roam_tests::args!["--config", config])
}

/// The rows of a `lineitem-report`.
fn report(module: &Path, addr: &str, report: &str, via: &str) -> Result<Vec<Vec<serde_json::Value>>> {
    let input = format!(r#"{{"report": "{report}", "via": "{via}"}}"#);
    let out = roam_tests::roam_ok(roam_tests::args!["eval", module, "--host", addr, "--input", input])?;
    let parsed: serde_json::Value = serde_json::from_str(&out)?;
    Ok(serde_json::from_value(parsed["rows"].clone())?)
}

/// Whether two report cells agree: the same text or integer, or numbers within a millionth (the
/// engine shows the average of a decimal with four more digits than the column: 6 here).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let number = |v: &serde_json::Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok()));
    a == b || matches!((number(a), number(b)), (Some(x), Some(y)) if (x - y).abs() <= 1e-6)
}

#[test]
fn a_module_aggregating_column_batches_gets_the_engines_own_answers() -> Result<()> {
    let fx = roam_tests::Fixture::new()?;
    // Several column batches (at most 8,192 rows each) reach the module.
    const ROWS: usize = 30_000;
    let host = lineitem_host(&fx, ROWS)?;
    let addr = host.addr.to_string();
    let wasm = std::fs::read(roam_tests::agent_wasm("lineitem_report")?)?;
    let signed = fx.sign(&wasm, "alice", roam_keys::Kind::Query, "lineitem-report", "1.0.0", &["table:lineitem"])?;
    let module = fx.write("lineitem_report.signed.wasm", signed)?;

    // The filtered sum: an exact decimal, the same through the engine's SQL and in the module.
    let want = revenue_natively(ROWS);
    for via in ["sql", "columns"] {
        let got = report(&module, &addr, "revenue", via)?;
        ensure!(got == vec![vec![serde_json::Value::String(want.clone())]], "{via}: {got:?}, expected {want}");
    }
    // The grouped aggregate: the same groups, sums to the last digit, averages to a millionth.
    let (sql, columns) = (report(&module, &addr, "summary", "sql")?, report(&module, &addr, "summary", "columns")?);
    ensure!(sql.len() == 4 && columns.len() == 4, "{sql:?}\n{columns:?}");
    for (a, b) in sql.iter().zip(&columns) {
        ensure!(a.len() == 10 && a.iter().zip(b).all(|(x, y)| same(x, y)), "sql {a:?}\ncolumns {b:?}");
        ensure!(a[2..6].iter().zip(&b[2..6]).all(|(x, y)| x == y), "sums differ: {a:?} {b:?}");
    }
    // Every value of the four scanned columns reached the module.
    let scanned = report(&module, &addr, "scan", "columns")?;
    ensure!(scanned == vec![vec![serde_json::json!(4 * ROWS)]], "{scanned:?}");
    ensure!(report(&module, &addr, "scan", "sql")? == scanned);

    // A SQLite table has no columns to give: the module is told so, and how to fix it.
    let csv = fx.path().join("lineitem.csv");
    let sqlite = fx.host(roam_tests::args!["--name", "rows", "--table", format!("lineitem={}", csv.display())])?;
    let input = r#"{"report": "revenue", "via": "columns"}"#;
    let stderr =
        roam_tests::roam_err(roam_tests::args!["eval", module, "--host", sqlite.addr.to_string(), "--input", input])?;
    ensure!(stderr.contains("wrong resource type") && stderr.contains("engine = \"columnar\""), "{stderr}");
    // Its rows still come through the row API.
    ensure!(!report(&module, &sqlite.addr.to_string(), "scan", "sql")?.is_empty());
    sqlite.stop()?;
    host.stop()
}

#[test]
fn a_value_past_the_rows_types_are_inferred_from_widens_its_column() -> Result<()> {
    // Integers for 150,000 rows, then a decimal, then text: types inferred from the first rows
    // would not hold them, and the table is converted again with types that do.
    let dir = tempfile::tempdir()?;
    let mut csv = String::from("id,amount,note\n");
    for i in 0..150_000 {
        csv.push_str(&format!("{i},{},{}\n", i % 7, i % 5));
    }
    csv.push_str("150000,2.5,late\n");
    let path = dir.path().join("late.csv");
    std::fs::write(&path, csv)?;
    let mut resources = Resources::default();
    resources.add_columnar_table("t", Attachment::Fastened, &path, dir.path(), &BTreeMap::new(), 256 << 20)?;
    let got = rows(&resources, "SELECT amount, note FROM t WHERE id = 150000", vec![], Duration::from_secs(30))?;
    ensure!(got == vec![vec![Value::Real(2.5), Value::Text("late".into())]], "{got:?}");
    let got = rows(&resources, "SELECT count(*), sum(amount) FROM t", vec![], Duration::from_secs(30))?;
    let sum = (0..150_000).map(|i| (i % 7) as f64).sum::<f64>() + 2.5;
    ensure!(got == vec![vec![Value::Integer(150_001), Value::Real(sum)]], "{got:?}");
    Ok(())
}
