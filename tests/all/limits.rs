//! Hostile and broken query modules against a real host on loopback: each is stopped within
//! its limit with its own error, and the host keeps serving other clients meanwhile.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use roam_host::client::{Client, ClientError};
use roam_host::config::HostConfig;
use roam_host::host::Host;
use roam_host::protocol::{ErrorKind, ModuleRef, Request, Response};
use roam_host::server::RunningHost;
use roam_keys::{Kind, SecretKey};
use roam_tests::hostile;

/// A host with small limits and a trusted key to sign test modules with.
struct Small {
    _dir: tempfile::TempDir,
    key: SecretKey,
    running: RunningHost,
}

impl Small {
    async fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let trust = dir.path().join("trust");
        let (key_path, _, _) = roam_keys::write_keypair(&dir.path().join("keys"), "tester")?;
        std::fs::create_dir_all(&trust)?;
        roam_tests::open_access(&trust)?;
        std::fs::copy(dir.path().join("keys/tester.pub"), trust.join("tester.pub"))?;
        let mut config = HostConfig::new(trust, dir.path().join("data"));
        config.limits.time_ms = 400;
        config.limits.memory_mib = 16;
        config.limits.workers = Some(2);
        config.add_log("audit");
        let host = Host::open(&config)?;
        let running = RunningHost::start(host, "127.0.0.1:0".parse()?).await?;
        Ok(Self { _dir: dir, key: SecretKey::load(&key_path)?, running })
    }

    fn sign(&self, wat: &str, name: &str, caps: &[&str]) -> Result<Vec<u8>> {
        roam_tests::sign_with(&self.key, &wat::parse_str(wat)?, Kind::Query, name, "1.0.0", caps, (0, 3600))
    }

    async fn eval(&self, module: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut client = Client::connect(&self.running.addr().to_string()).await?;
        client.eval(module, vec![0xa0]).await
    }
}

/// A query that answers CBOR `true` at once.
const QUICK: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

const LOOP: &str = r#"(module (memory (export "memory") 1)
  (func (export "roam_query") (loop $l (br $l))))"#;

const MEMORY_BOMB: &str = r#"(module (memory (export "memory") 1)
  (func (export "roam_query") (loop $l (drop (memory.grow (i32.const 16))) (br $l))))"#;

const TABLE_BOMB: &str = r#"(module (memory (export "memory") 1) (table 1 funcref)
  (func (export "roam_query") (loop $l (drop (table.grow (ref.null func) (i32.const 1000))) (br $l))))"#;

const RECURSION: &str = r#"(module (memory (export "memory") 1)
  (func $r (export "roam_query") (call $r)))"#;

fn kind_of(result: Result<Vec<u8>, ClientError>) -> Result<(ErrorKind, String)> {
    match result {
        Err(ClientError::Remote(e)) => Ok((e.kind, e.message)),
        Ok(_) => bail!("the module was expected to fail, but it returned a result"),
        Err(other) => bail!("expected an error from the host, got {other}"),
    }
}

#[tokio::test]
async fn runaway_modules_are_stopped_with_their_own_error() -> Result<()> {
    let host = Small::start().await?;
    for (wat, name, expected, words) in [
        (LOOP, "loop", ErrorKind::OutOfTime, "out of time"),
        (MEMORY_BOMB, "memory-bomb", ErrorKind::OutOfMemory, "memory"),
        (TABLE_BOMB, "table-bomb", ErrorKind::OutOfMemory, "table"),
        (RECURSION, "recursion", ErrorKind::StackOverflow, "stack"),
    ] {
        let module = host.sign(wat, name, &[])?;
        let started = Instant::now();
        let (kind, message) = kind_of(host.eval(&module).await)?;
        assert_eq!(kind, expected, "{name}: {message}");
        assert!(message.contains(words), "{name}: {message:?} should mention {words:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{name} took {:?}", started.elapsed());
    }
    // The host survived all of them.
    let quick = host.sign(QUICK, "quick", &[])?;
    assert_eq!(host.eval(&quick).await?, vec![0xf5]);
    host.running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn other_clients_are_served_while_a_module_spins() -> Result<()> {
    let fixture = roam_tests::Fixture::new()?;
    let host = slow_host(&fixture)?;
    let addr = host.addr.to_string();
    let sign = |wat: &str, name: &str| fixture.sign(&wat::parse_str(wat)?, "alice", Kind::Query, name, "1.0.0", &[]);
    let (spinning, quick) = (sign(LOOP, "loop")?, sign(QUICK, "quick")?);
    let spinner = tokio::spawn(async move {
        let result = Client::connect(&addr).await?.eval(&spinning, vec![0xa0]).await;
        Ok::<_, ClientError>((result, Instant::now()))
    });
    // The spinner holds a module thread once that thread is demoted (5 ms into the call): only
    // then do the quick queries below test anything.
    demoted_worker(&host).await?;
    let mut answered = Vec::new();
    for _ in 0..5 {
        assert_eq!(Client::connect(&host.addr.to_string()).await?.eval(&quick, vec![0xa0]).await?, vec![0xf5]);
        answered.push(Instant::now());
    }
    let (spun, spin_ended) = spinner.await??;
    assert_eq!(kind_of(spun)?.0, ErrorKind::OutOfTime);
    let last_quick = answered.last().context("no answers")?;
    assert!(last_quick < &spin_ended, "quick queries waited for the spinning module to be stopped");
    host.stop()
}

#[tokio::test]
async fn a_module_that_imports_what_the_host_lacks_is_refused_at_load() -> Result<()> {
    let host = Small::start().await?;
    let module = host.sign(
        r#"(module (import "roam" "launch_missiles" (func)) (memory (export "memory") 1)
           (func (export "roam_query")))"#,
        "missiles",
        &[],
    )?;
    let (kind, message) = kind_of(host.eval(&module).await)?;
    assert_eq!(kind, ErrorKind::Load);
    assert!(message.contains("launch_missiles"), "{message}");
    host.running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn contract_breaches_and_missing_results_trap_with_a_reason() -> Result<()> {
    let host = Small::start().await?;
    let out_of_bounds = host.sign(
        r#"(module (import "roam" "finish" (func $finish (param i32 i32 i32)))
           (memory (export "memory") 1)
           (func (export "roam_query") (call $finish (i32.const 0) (i32.const 65530) (i32.const 100))))"#,
        "oob",
        &[],
    )?;
    let (kind, message) = kind_of(host.eval(&out_of_bounds).await)?;
    assert_eq!(kind, ErrorKind::Trap);
    assert!(message.contains("out of bounds"), "{message}");

    let silent = host.sign(r#"(module (memory (export "memory") 1) (func (export "roam_query")))"#, "silent", &[])?;
    let (kind, message) = kind_of(host.eval(&silent).await)?;
    assert_eq!(kind, ErrorKind::Trap);
    assert!(message.contains("without a result"), "{message}");
    host.running.shutdown().await;
    Ok(())
}

/// A query that opens the resource named in its data segment and finishes with CBOR `true` if
/// that succeeded, or reports the host's refusal as its error.
fn opener(resource: &str) -> String {
    format!(
        r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (import "roam" "resource_open" (func $open (param i32 i32) (result i64)))
  (import "roam" "last_error_len" (func $err_len (result i32)))
  (import "roam" "last_error_read" (func $err_read (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (data (i32.const 16) "{resource}")
  (func (export "roam_query")
    (if (i64.ge_s (call $open (i32.const 16) (i32.const {len})) (i64.const 0))
      (then (call $finish (i32.const 0) (i32.const 0) (i32.const 1)))
      (else (call $err_read (i32.const 1024))
            (call $finish (i32.const 1) (i32.const 1024) (call $err_len))))))"#,
        len = resource.len()
    )
}

#[tokio::test]
async fn resources_open_only_with_a_signed_capability() -> Result<()> {
    let host = Small::start().await?;
    let granted = host.sign(&opener("audit"), "open-granted", &["log:audit"])?;
    assert_eq!(host.eval(&granted).await?, vec![0xf5]);

    // The module fails for want of the capability: the refusal is the error, not the module's
    // report of it.
    let ungranted = host.sign(&opener("audit"), "open-ungranted", &[])?;
    let (kind, message) = kind_of(host.eval(&ungranted).await)?;
    assert_eq!(kind, ErrorKind::Capability);
    assert!(message.contains("log:audit") && message.contains("--cap"), "{message}");

    let unknown = host.sign(&opener("nowhere"), "open-unknown", &["log:*"])?;
    let (kind, message) = kind_of(host.eval(&unknown).await)?;
    assert_eq!(kind, ErrorKind::Module);
    assert!(message.contains("no resource named"), "{message}");
    host.running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn connections_over_the_cap_are_told_so_and_closed() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("trust"))?;
    roam_tests::open_access(&dir.path().join("trust"))?;
    let mut config = HostConfig::new(dir.path().join("trust"), dir.path().join("data"));
    config.limits.max_connections = 1;
    config.limits.reserved_connections = 0;
    let running = RunningHost::start(Host::open(&config)?, "127.0.0.1:0".parse()?).await?;
    let addr = running.addr().to_string();
    let first = Client::connect(&addr).await?;
    match Client::connect(&addr).await {
        Err(ClientError::Refused(e)) => {
            assert_eq!(e.kind, ErrorKind::Busy);
            assert!(e.message.contains("limit of 1 connections"), "{}", e.message);
        }
        other => bail!("a second connection was not refused: {other:?}"),
    }
    drop(first);
    // The slot is free again once the host has seen the first client leave.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut again = loop {
        match Client::connect(&addr).await {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => bail!("the freed connection slot was never reused: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    assert!(matches!(again.request(&roam_host::protocol::Request::Ping).await?, roam_host::protocol::Response::Pong));
    running.shutdown().await;
    Ok(())
}

/// Storms of cheap host calls, each in a tight loop until something stops it (two more are
/// shared with the benchmark: `roam_tests::hostile`).
const OPEN_STORM: &str = r#"(module
  (import "roam" "resource_open" (func $open (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "audit")
  (func (export "roam_query") (loop $l (drop (call $open (i32.const 0) (i32.const 5))) (br $l))))"#;

const APPEND_STORM: &str = r#"(module
  (import "roam" "resource_open" (func $open (param i32 i32) (result i64)))
  (import "roam" "log_append" (func $append (param i32 i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "audit")
  (func (export "roam_query") (local $h i32)
    (local.set $h (i32.wrap_i64 (call $open (i32.const 0) (i32.const 5))))
    (loop $l (drop (call $append (local.get $h) (i32.const 1024) (i32.const 4096))) (br $l))))"#;

/// Bytes one call may append to logs on the storm host.
const STORM_LOG_KIB: usize = 64;

/// A `roam host` process with a deadline per call of `time_ms`, the sample `sales` table and an
/// `audit` log, for measuring its memory from outside.
fn storm_host(fixture: &roam_tests::Fixture, time_ms: u64) -> Result<roam_tests::HostProcess> {
    let csv = fixture.path().join("sales.csv");
    roam_tests::sample::write_csv(&csv, &roam_tests::sample::generate(100, 1))?;
    let config = fixture.write(
        &format!("storm-{time_ms}.toml"),
        format!(
            "trust = {:?}\n[limits]\ntime_ms = {time_ms}\nworkers = 2\nlog_kib = {STORM_LOG_KIB}\n",
            fixture.trust_dir().display().to_string()
        ),
    )?;
    fixture.host(roam_tests::args![
        "--config",
        &config,
        "--table",
        format!("sales={}", csv.display()),
        "--log",
        "audit"
    ])
}

/// The deadline per call of the host the storms that run until their deadline are stopped on.
const STORM_TIME_MS: u64 = 1500;

/// The deadline per call of the host the append storm runs on, which is stopped by its log
/// budget instead: sixteen synced appends. A generous upper bound, not a wait: on a loaded
/// machine the storm's thread is demoted and runs only when a core has nothing else to do, and
/// with the storms' 1.5 s it once ran out of time before it reached its budget.
const APPEND_TIME_MS: u64 = 60_000;

#[tokio::test]
async fn host_call_storms_are_stopped_with_bounded_memory_and_logs() -> Result<()> {
    let fixture = roam_tests::Fixture::new()?;
    let timed = storm_host(&fixture, STORM_TIME_MS)?;
    let budgeted = storm_host(&fixture, APPEND_TIME_MS)?;
    let sign = |wat: &str, name: &str| -> Result<Vec<u8>> {
        fixture.sign(&wat::parse_str(wat)?, "alice", Kind::Query, name, "1.0.0", &["table:sales", "log:audit"])
    };
    let quick = sign(QUICK, "quick")?;
    for (host, wat, name, expected, words) in [
        (&timed, hostile::LOG_STORM, "log-storm", ErrorKind::OutOfTime, "out of time"),
        (&timed, OPEN_STORM, "open-storm", ErrorKind::OutOfTime, "out of time"),
        (&timed, hostile::CURSOR_STORM, "cursor-storm", ErrorKind::OutOfTime, "out of time"),
        (&budgeted, APPEND_STORM, "append-storm", ErrorKind::Trap, "appended"),
    ] {
        let addr = host.addr.to_string();
        // A call first, so that the host's threads and buffers exist before the baseline.
        assert_eq!(Client::connect(&addr).await?.eval(&quick, vec![0xa0]).await?, vec![0xf5]);
        let before = host.memory("VmRSS")?;
        let module = sign(wat, name)?;
        let mut client = Client::connect(&addr).await?;
        let storm = tokio::spawn(async move { client.eval(&module, vec![0xa0]).await });
        // The host's memory while the storm runs, sampled until it is stopped.
        let mut peak = 0;
        while !storm.is_finished() {
            peak = peak.max(host.memory("VmRSS")?);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (kind, message) = kind_of(storm.await?)?;
        assert_eq!(kind, expected, "{name}: {message}");
        assert!(message.contains(words), "{name}: {message:?} should mention {words:?}");
        let grew = peak.saturating_sub(before);
        eprintln!("{name}: host RSS grew by {} KiB at its peak", grew >> 10);
        assert!(grew < 16 << 20, "{name}: the host's memory grew by {} MiB while it ran", grew >> 20);
    }
    // The hosts still serve, and kept at most their budget of each kind of log.
    for host in [&timed, &budgeted] {
        assert_eq!(Client::connect(&host.addr.to_string()).await?.eval(&quick, vec![0xa0]).await?, vec![0xf5]);
    }
    // 64 KiB at 64 bytes a line at least, and one line saying the rest was dropped.
    // (The request's own line in the host's log names the module too.)
    let diagnostics =
        timed.stderr().lines().filter(|l| l.contains("log-storm@1.0.0") && !l.contains("request ")).count();
    assert!(diagnostics <= 1025, "the host wrote {diagnostics} diagnostic lines for one call");
    let data_dir = budgeted.data_dir().to_owned();
    timed.stop()?;
    budgeted.stop()?;
    let appended: usize = roam_host::state::State::open(&data_dir)?.log_lines("audit")?.iter().map(String::len).sum();
    let budget = STORM_LOG_KIB << 10;
    assert!(appended <= budget, "one call appended {appended} bytes to a log, over the budget of {budget}");
    Ok(())
}

#[tokio::test]
async fn reopening_a_resource_and_requerying_reuse_their_handles() -> Result<()> {
    // What keeps a storm of opens and queries from growing the host's tables: opening the same
    // resource twice gives the same handle, and a closed cursor's slot is reused.
    let fixture = roam_tests::Fixture::new()?;
    let host = storm_host(&fixture, STORM_TIME_MS)?;
    let wat = r#"(module
      (import "roam" "finish" (func $finish (param i32 i32 i32)))
      (import "roam" "resource_open" (func $open (param i32 i32) (result i64)))
      (import "roam" "table_query" (func $query (param i32 i32 i32 i32 i32) (result i64)))
      (import "roam" "cursor_close" (func $close (param i32)))
      (memory (export "memory") 1)
      (data (i32.const 0) "sales")
      (data (i32.const 16) "SELECT 1")
      (data (i32.const 32) "\f5\f4")
      (func $select (param $h i64) (result i64)
        (call $query (i32.wrap_i64 (local.get $h)) (i32.const 16) (i32.const 8) (i32.const 0) (i32.const 0)))
      (func (export "roam_query") (local $h i64) (local $c i64) (local $same i32)
        (local.set $h (call $open (i32.const 0) (i32.const 5)))
        (local.set $same (i64.eq (local.get $h) (call $open (i32.const 0) (i32.const 5))))
        (local.set $c (call $select (local.get $h)))
        (call $close (i32.wrap_i64 (local.get $c)))
        (local.set $same (i32.and (local.get $same) (i64.ge_s (local.get $c) (i64.const 0))))
        (local.set $same (i32.and (local.get $same) (i64.eq (local.get $c) (call $select (local.get $h)))))
        ;; CBOR true at 32 if every handle was reused, false at 33 otherwise.
        (call $finish (i32.const 0) (i32.sub (i32.const 33) (local.get $same)) (i32.const 1))))"#;
    let module = fixture.sign(&wat::parse_str(wat)?, "alice", Kind::Query, "reuse", "1.0.0", &["table:sales"])?;
    let answer = Client::connect(&host.addr.to_string()).await?.eval(&module, vec![0xa0]).await?;
    assert_eq!(answer, vec![0xf5], "a second open or query got a new handle");
    host.stop()
}

/// A query that finishes with `len` bytes at `ptr` of a memory of `pages` pages.
fn finisher(pages: u32, ptr: u32, len: u32) -> String {
    format!(
        r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") {pages})
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const {ptr}) (i32.const {len}))))"#
    )
}

#[tokio::test]
async fn results_over_the_cap_or_outside_memory_are_refused() -> Result<()> {
    let host = Small::start().await?;
    let cap = roam_host::config::LimitsConfig::default().result_kib << 10;
    let pages = (cap >> 16) as u32 + 1;
    let at_cap = host.sign(&finisher(pages, 0, cap as u32), "at-cap", &[])?;
    assert_eq!(host.eval(&at_cap).await?.len(), cap, "a result of exactly the cap is returned whole");

    // A result over the cap is the host's limit, named by its setting, not a fault of the module.
    for (wat, name, kind_wanted, words) in [
        (finisher(pages, 0, cap as u32 + 1), "over-cap", ErrorKind::Refused, "result_kib"),
        (finisher(1, 0, u32::MAX), "u32-max", ErrorKind::Refused, "result_kib"),
        (finisher(1, 65_536 - 10, 100), "past-the-end", ErrorKind::Trap, "out of bounds"),
        (finisher(1, u32::MAX - 15, 32), "wrapping", ErrorKind::Trap, "out of bounds"),
    ] {
        let module = host.sign(&wat, name, &[])?;
        let (kind, message) = kind_of(host.eval(&module).await)?;
        assert_eq!(kind, kind_wanted, "{name}: {message}");
        assert!(message.contains(words), "{name}: {message:?} should mention {words:?}");
    }
    // The host survived all of them.
    let quick = host.sign(QUICK, "quick", &[])?;
    assert_eq!(host.eval(&quick).await?, vec![0xf5]);
    host.running.shutdown().await;
    Ok(())
}

/// A query that spins until its deadline, or, given more than one byte of input, counts down
/// from 2^26 (tens of milliseconds, which is past `DEMOTE_AFTER`: a long call) and answers CBOR
/// `true`: one module that can be made to run long without waiting for its deadline.
const SPIN_OR_COUNT: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (import "roam" "input_len" (func $input_len (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (local $n i32)
    (if (i32.le_u (call $input_len) (i32.const 1)) (then (loop $l (br $l))))
    (local.set $n (i32.const 0x4000000))
    (loop $l (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br_if $l (local.get $n)))
    (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

/// Inputs of [`SPIN_OR_COUNT`].
const SPIN: [u8; 1] = [0xa0];
const COUNT: [u8; 2] = [0x41, 0x00];

/// How long a call may run on [`slow_host`]: the time the quick requests of the tests below have
/// to be answered while a spinning call holds a module thread. A generous upper bound for a
/// loaded machine; the tests end as soon as the spinning call does.
const SLOW_TIME: Duration = Duration::from_secs(5);

/// A `roam host` process with two module threads and a deadline per call of [`SLOW_TIME`]; a
/// request may queue for a module thread for several deadlines.
fn slow_host(fixture: &roam_tests::Fixture) -> Result<roam_tests::HostProcess> {
    let config = fixture.write(
        "slow.toml",
        format!(
            "trust = {:?}\n[limits]\ntime_ms = {}\nqueue_ms = {}\nworkers = 2\n",
            fixture.trust_dir().display().to_string(),
            SLOW_TIME.as_millis(),
            4 * SLOW_TIME.as_millis()
        ),
    )?;
    fixture.host(roam_tests::args!["--config", &config])
}

/// Waits until one of `host`'s module threads is demoted, that is, is running a long call. A
/// thread is demoted only while a call runs past `DEMOTE_AFTER`, or from the
/// start when the module's last call ran long.
async fn demoted_worker(host: &roam_tests::HostProcess) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let threads = host.threads("roam-worker")?;
        if threads.iter().any(|&(_, policy)| policy == IDLE) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no module thread was demoted within 30 s: {threads:?} (id, policy)");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// However many calls of a module that runs long arrive at once, one module thread stays free
/// for short calls: long calls wait for each other (sent by hash), or are refused as busy when
/// every long-call permit is taken (sent whole, which would otherwise hold a thread waiting).
///
/// Everything is ordered by when answers arrived, against a spinning call that cannot end
/// before [`SLOW_TIME`] has passed: a quick call and a whole long call answered before the
/// spinner's answer were served while it held its thread; the second long call, answered only
/// after `SLOW_TIME`, waited for it.
#[tokio::test]
async fn long_calls_never_take_the_last_module_thread() -> Result<()> {
    let fixture = roam_tests::Fixture::new()?;
    let host = slow_host(&fixture)?;
    let addr = host.addr.to_string();
    let sign = |wat: &str, name: &str| fixture.sign(&wat::parse_str(wat)?, "alice", Kind::Query, name, "1.0.0", &[]);
    let (spin, quick) = (sign(SPIN_OR_COUNT, "spin-or-count")?, sign(QUICK, "quick")?);
    // Compiled before the measure, so that the quick call below is just a call.
    assert_eq!(Client::connect(&addr).await?.eval(&quick, vec![0xa0]).await?, vec![0xf5]);
    // A first call that runs long (it counts; on a starved machine it may instead reach its
    // deadline) marks the module as one that runs long.
    match Client::connect(&addr).await?.eval(&spin, COUNT.to_vec()).await {
        Ok(answer) => assert_eq!(answer, vec![0xf5]),
        Err(e) => assert_eq!(kind_of(Err(e))?.0, ErrorKind::OutOfTime),
    }
    // Its thread is at normal priority again (or replaced) before the next call.
    let threads = host.threads("roam-worker")?.len();
    pool_at_normal_priority(&host, threads).await?;

    let long_call = |input: &[u8]| {
        let (addr, spin, input) = (addr.clone(), spin.clone(), input.to_vec());
        tokio::spawn(async move {
            let result = Client::connect(&addr).await?.eval(&spin, input).await;
            Ok::<_, ClientError>((result, Instant::now()))
        })
    };
    let first_sent = Instant::now();
    let first = long_call(&SPIN);
    // The first long call holds the long-call permit and a module thread once its thread is
    // demoted (from its start: the module's last call ran long).
    demoted_worker(&host).await?;
    let second = long_call(&COUNT);

    // Two workers, two long calls: one runs, one waits, and a short call is served meanwhile.
    assert_eq!(Client::connect(&addr).await?.eval(&quick, vec![0xa0]).await?, vec![0xf5]);
    let quick_answered = Instant::now();
    let mut client = Client::connect(&addr).await?;
    let whole = Request::Eval { module: ModuleRef::Bytes(spin.clone()), input: SPIN.to_vec() };
    match client.request(&whole).await? {
        Response::Error(e) => assert_eq!(e.kind, ErrorKind::Busy, "{}", e.message),
        other => bail!("a long call sent whole while the long-call permit is taken: {other:?}"),
    }
    let whole_refused = Instant::now();

    let (result, first_ended) = first.await??;
    assert_eq!(kind_of(result)?.0, ErrorKind::OutOfTime);
    assert!(quick_answered < first_ended, "the short call waited for a long one to end");
    assert!(whole_refused < first_ended, "the long call sent whole was answered only after the long one ended");
    // The second long call ran (counting, or to its deadline if starved), and only once the
    // first had ended: no sooner than `SLOW_TIME` after the first was sent.
    let (result, second_ended) = second.await??;
    if let Err(e) = result {
        assert_eq!(kind_of(Err(e))?.0, ErrorKind::OutOfTime);
    }
    let waited = second_ended - first_sent;
    assert!(waited >= SLOW_TIME, "the second long call ended {waited:?} after the first was sent: it did not wait");
    host.stop()
}

/// Linux's scheduling policies, as `/proc` shows them.
const NORMAL: u32 = 0;
const IDLE: u32 = 5;

/// A module that runs long has its thread demoted to the idle scheduling class, so that other
/// clients' short requests run first on a busy machine; afterwards the host's module threads
/// are all back at normal priority. Once as the test runs (the thread is raised again if it may
/// be, or replaced), once in a user namespace where raising a priority is never allowed (the
/// demoted thread must be replaced).
#[tokio::test]
async fn a_long_run_gives_way_and_leaves_no_thread_at_low_priority() -> Result<()> {
    let fixture = roam_tests::Fixture::new()?;
    let config = fixture.write(
        "slow.toml",
        format!("trust = {:?}\n[limits]\ntime_ms = 600\nworkers = 2\n", fixture.trust_dir().display().to_string()),
    )?;
    let spin = fixture.sign(&wat::parse_str(LOOP)?, "alice", Kind::Query, "loop", "1.0.0", &[])?;
    let quick = fixture.sign(&wat::parse_str(QUICK)?, "alice", Kind::Query, "quick", "1.0.0", &[])?;
    for wrapper in [&[][..], &["unshare", "--user", "--map-root-user"][..]] {
        let host = fixture.host_in(wrapper, roam_tests::args!["--config", &config])?;
        let addr = host.addr.to_string();
        // A first evaluation compiles, which starts the compiler's threads: they take the
        // name of the thread that started them.
        assert_eq!(Client::connect(&addr).await?.eval(&quick, vec![0xa0]).await?, vec![0xf5]);
        let before = host.threads("roam-worker")?;
        assert!(before.len() >= 2 && before.iter().all(|&(_, policy)| policy == NORMAL), "{wrapper:?}: {before:?}");

        let mut client = Client::connect(&addr).await?;
        let spin = spin.clone();
        let spinner = tokio::spawn(async move { client.eval(&spin, vec![0xa0]).await });
        let mut demoted = None;
        while !spinner.is_finished() {
            demoted = demoted.or(host.threads("roam-worker")?.into_iter().find(|&(_, policy)| policy == IDLE));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(kind_of(spinner.await?)?.0, ErrorKind::OutOfTime);
        let (tid, _) = demoted.with_context(|| format!("{wrapper:?}: no worker thread was demoted"))?;

        // The pool is whole again, at normal priority, and serves.
        let after = pool_at_normal_priority(&host, before.len())
            .await
            .with_context(|| format!("{wrapper:?}, after the run"))?;
        if !wrapper.is_empty() {
            assert!(after.iter().all(|&(t, _)| t != tid), "{wrapper:?}: demoted {tid}, now {after:?}");
        }
        assert_eq!(Client::connect(&addr).await?.eval(&quick, vec![0xa0]).await?, vec![0xf5]);
        host.stop()?;
    }
    Ok(())
}

/// The host's bulk threads, which encode and write bulky responses, run in the idle scheduling
/// class, so that copying megabytes for one client never holds a core that other clients'
/// small requests wait for; a bulky result (here 1 MiB) still arrives whole.
#[tokio::test]
async fn the_bulk_threads_run_at_idle_priority_and_bulky_results_arrive_whole() -> Result<()> {
    let fixture = roam_tests::Fixture::new()?;
    let config = fixture.write("bulk.toml", format!("trust = {:?}\n", fixture.trust_dir().display().to_string()))?;
    let host = fixture.host_in(&[], roam_tests::args!["--config", &config])?;
    let size = 1 << 20;
    let bulky = fixture.sign(&wat::parse_str(finisher(17, 0, size))?, "alice", Kind::Query, "bulky", "1.0.0", &[])?;
    let result = Client::connect(&host.addr.to_string()).await?.eval(&bulky, vec![0xa0]).await?;
    assert_eq!(result.len(), size as usize);
    let bulk = host.threads("roam-bulk")?;
    assert!(
        !bulk.is_empty() && bulk.iter().all(|&(_, policy)| policy == IDLE),
        "the bulk threads are {bulk:?} (id, policy)"
    );
    // The module threads are not among them, and are back in the normal class.
    pool_at_normal_priority(&host, host.threads("roam-worker")?.len()).await?;
    host.stop()?;
    Ok(())
}

/// The host's module threads once there are `count` and all are at normal priority (a
/// replaced thread takes a moment to end, and its replacement to be named); an error after 10 s,
/// a bound for a loaded machine.
async fn pool_at_normal_priority(host: &roam_tests::HostProcess, count: usize) -> Result<Vec<(u32, u32)>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let threads = host.threads("roam-worker")?;
        if threads.len() == count && threads.iter().all(|&(_, policy)| policy == NORMAL) {
            return Ok(threads);
        }
        if Instant::now() > deadline {
            bail!("the module threads are {threads:?} (id, policy), expected {count} in the normal class");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
