//! The command line as scripts and operators use it: `--json`, data alone on stdout, quiet
//! broken pipes, exit statuses, `ROAM_HOST`, completions, and the host's log (`RUST_LOG`,
//! `--log-format json`, one line per request, refusals at warn).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use roam_tests::{Fixture, HostProcess, args, roam, roam_ok};

/// The exit statuses `roam --help` documents.
const REFUSED: i32 = 3;
const TIMED_OUT: i32 = 4;
const NOT_FINISHED: i32 = 5;

/// `roam` with the environment of [`roam_tests::roam`] plus `env`.
fn roam_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<std::process::Output> {
    let home = tempfile::tempdir()?;
    let mut cmd = Command::new(roam_tests::roam_bin()?);
    cmd.args(args).env("HOME", home.path()).env_remove("ROAM_IDENTITY").env_remove("ROAM_HOST");
    cmd.env("ROAM_KNOWN_HOSTS", home.path().join("known_hosts"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.stdin(Stdio::null()).output()?)
}

/// A host holding alice's order validator, published as a code module.
fn host_with_a_module(fx: &Fixture) -> Result<HostProcess> {
    let host = fx.host(args!["--log", "audit"])?;
    let wasm = std::fs::read(roam_tests::agent_wasm("order_validator")?)?;
    let code =
        fx.write("validator.wasm", fx.sign(&wasm, "alice", roam_keys::Kind::Code, "validator", "1.0.0", &[])?)?;
    roam_ok(args!["publish", code, "--host", host.addr.to_string()])?;
    Ok(host)
}

#[test]
fn json_output_holds_the_data_alone_and_a_closed_pipe_ends_quietly() -> Result<()> {
    let fx = Fixture::new()?;
    let host = host_with_a_module(&fx)?;
    let addr = host.addr.to_string();

    let listed: serde_json::Value = serde_json::from_str(&roam_ok(args!["modules", "--host", addr, "--json"])?)?;
    let first = &listed[0];
    ensure!(first["name"] == "validator" && first["kind"] == "code" && first["version"] == "1.0.0", "{listed}");
    ensure!(first["hash"].as_str().is_some_and(|h| h.len() == 64), "{listed}");

    // Dates, not unix seconds, in both forms of `verify`.
    let signed = fx.path().join("validator.wasm");
    let verified: serde_json::Value =
        serde_json::from_str(&roam_ok(args!["verify", signed, "--trust", fx.trust_dir(), "--json"])?)?;
    ensure!(verified["expires"].as_str().is_some_and(|d| d.starts_with("20") && d.ends_with('Z')), "{verified}");
    let text = roam_ok(args!["verify", signed, "--trust", fx.trust_dir()])?;
    ensure!(text.contains("valid: from 20") && !text.contains("unix seconds"), "{text}");

    // `roam modules | head -0`: the reader is gone before roam writes.
    let mut child = Command::new(roam_tests::roam_bin()?)
        .args(["modules", "--host", &addr])
        .env("ROAM_KNOWN_HOSTS", fx.path().join("known_hosts"))
        .env_remove("ROAM_IDENTITY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "a closed pipe ended roam with {}: {stderr}", out.status);
    ensure!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");

    // ROAM_HOST stands for --host.
    let out = roam_with_env(&["modules", "--json"], &[("ROAM_HOST", &addr)])?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    host.stop()
}

#[test]
fn exit_statuses_tell_refusals_timeouts_and_unfinished_agents_apart() -> Result<()> {
    // A host whose policy refuses anonymous listing: status 3.
    let dir = tempfile::tempdir()?;
    let trust = dir.path().join("trust");
    std::fs::create_dir_all(&trust)?;
    let closed = HostProcess::spawn(args!["--trust", trust])?;
    let out = roam(args!["modules", "--host", closed.addr.to_string()])?;
    ensure!(out.status.code() == Some(REFUSED), "{out:?}");
    closed.stop()?;

    // A usage error: status 2, and a bare address says the port is missing (status 1).
    ensure!(roam(args!["modules"])?.status.code() == Some(2));
    let out = roam(args!["modules", "--host", "127.0.0.1"])?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(1) && said.contains("HOST:PORT"), "{said}");

    // An agent waiting for a host that is down: --wait gives up (4); recalled while a
    // --wait waits for its result, it ends without finishing (5).
    let net = crate::agents::Net::new(&["home", "down"])?;
    let home = HostProcess::spawn(args![
        "--name",
        "home",
        "--listen",
        format!("127.0.0.1:{}", net.port("home")?),
        "--key",
        net.path("host-keys/home.key"),
        "--trust",
        net.path("trust"),
        "--peers",
        net.path("peers"),
        "--data-dir",
        net.path("data-home")
    ])?;
    let home_addr = home.addr.to_string();
    let module = net.path("hop.wasm");
    std::fs::write(&module, net.sign_agent("hop_counter", "hop-counter", &[])?)?;
    let input = serde_json::json!({ "hosts": [format!("127.0.0.1:{}", net.port("down")?)] }).to_string();
    let out = roam(args!["launch", module, "--host", home_addr, "--input", input, "--wait", "--timeout", "1s"])?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(TIMED_OUT) && said.contains("still"), "{out:?}");
    ensure!(out.stdout.is_empty(), "stdout holds more than the result: {out:?}");

    let waiting = Command::new(roam_tests::roam_bin()?)
        .args(args!["launch", module, "--host", home_addr, "--input", input, "--wait"])
        .env("ROAM_KNOWN_HOSTS", net.path("known_hosts"))
        .env_remove("ROAM_IDENTITY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed: serde_json::Value =
            serde_json::from_str(&roam_ok(args!["agents", "--host", home_addr, "--json"])?)?;
        let parked = listed.as_array().context("a list")?.iter().filter(|a| a["state"] == "parked").count();
        // The timed-out one and the waited-for one.
        if parked == 2 {
            let newest = listed.as_array().context("a list")?.iter().map(|a| a["id"].clone());
            // Recall both: whichever is the waited-for one ends its --wait.
            for id in newest {
                roam_ok(args!["recall", id.as_str().context("an id")?, "--host", home_addr])?;
            }
            break listed;
        }
        ensure!(Instant::now() < deadline, "the agents never parked: {listed}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = waiting.wait_with_output()?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(NOT_FINISHED) && said.contains("recalled"), "{said} ({listed})");
    home.stop()
}

#[test]
fn completions_are_generated_for_the_usual_shells() -> Result<()> {
    for (shell, mark) in [("bash", "_roam()"), ("zsh", "#compdef roam"), ("fish", "complete -c roam")] {
        let script = roam_ok(args!["completions", shell])?;
        ensure!(script.contains(mark) && script.contains("launch"), "{shell}: {}", &script[..script.len().min(200)]);
    }
    // A broken identity does not stop a shell's set-up.
    let out = roam_with_env(&["completions", "bash"], &[("ROAM_IDENTITY", "/nonexistent/identity.key")])?;
    ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Every request is logged once, with who asked, what and how it went; a refusal at warn with
/// its reason; no colour codes in a file; `--log-format json` writes JSON lines.
#[test]
fn the_host_logs_each_request_and_each_refusal() -> Result<()> {
    let fx = Fixture::new()?;
    let host = host_with_a_module(&fx)?;
    let addr = host.addr.to_string();
    let bad = fx.write("tampered.wasm", b"\0asm\x01\0\0\0")?;
    let _ = roam(args!["eval", bad, "--host", addr])?;
    // Each line is written before the answer is sent.
    let log = host.stderr();
    host.stop()?;
    let line = |what: &str, operation: &str| {
        let operation = format!("operation={operation}");
        log.lines().find(|l| l.contains(what) && l.contains(&operation)).map(str::to_owned)
    };
    let served = line("request served", "publish").with_context(|| format!("no line for the publish:\n{log}"))?;
    ensure!(
        served.contains("INFO") && served.contains("validator@1.0.0") && served.contains("caller=anonymous"),
        "{served}"
    );
    let refused = line("request refused", "eval").with_context(|| format!("no line for the refused eval:\n{log}"))?;
    ensure!(refused.contains("WARN") && refused.contains("signature"), "{refused}");
    ensure!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");

    let json_host = fx.host(args!["--log-format", "json"])?;
    roam_ok(args!["modules", "--host", json_host.addr.to_string()])?;
    let log = json_host.stderr();
    json_host.stop()?;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(event["level"].is_string() && event["message"].is_string(), "{line}");
    }
    ensure!(log.contains("\"operation\":\"list\""), "{log}");
    Ok(())
}

/// RUST_LOG is the one variable: at debug it shows roam's own detail, not the engine's
/// internals, unless it names them.
#[test]
fn rust_log_shows_roam_and_keeps_the_engine_quiet_unless_asked() -> Result<()> {
    let fx = Fixture::new()?;
    let host = host_with_a_module(&fx)?;
    let addr = host.addr.to_string();
    let run = |filter: &str, cache: &str| -> Result<String> {
        let cache = fx.path().join(cache);
        let trust = fx.trust_dir();
        let args = [
            "run",
            "validator",
            "--from",
            &addr,
            "--trust",
            &trust.to_string_lossy(),
            "--cache",
            &cache.to_string_lossy(),
            "--input",
            "{}",
        ];
        let out = roam_with_env(&args, &[("RUST_LOG", filter)])?;
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let debug = run("debug", "cache-a")?;
    ensure!(!debug.contains("wasmtime") && !debug.contains("cranelift"), "{debug}");
    let asked = run("debug,cranelift=debug", "cache-b")?;
    ensure!(
        asked.contains("cranelift"),
        "naming cranelift in RUST_LOG did not show it:\n{}",
        &asked[..asked.len().min(2000)]
    );
    host.stop()
}

/// The messages of the first hour: each cause once, what to do, no Rust internals.
#[test]
fn errors_say_what_happened_once_and_what_to_do() -> Result<()> {
    let fx = Fixture::new()?;
    let host = host_with_a_module(&fx)?;
    let addr = host.addr.to_string();
    let stderr = |out: std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // Nothing listening: the cause once, and the question to ask.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let said = stderr(roam(args!["modules", "--host", closed])?);
    ensure!(said.matches("Connection refused").count() == 1 && said.contains("listening there"), "{said}");

    // Another kind of server: said so, not "frame of 1213486160 bytes".
    let http = std::net::TcpListener::bind("127.0.0.1:0")?;
    let http_addr = http.local_addr()?.to_string();
    std::thread::spawn(move || {
        for stream in http.incoming().flatten().take(1) {
            let _ = std::io::Write::write_all(&mut &stream, b"HTTP/1.1 400 Bad Request\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let said = stderr(roam(args!["modules", "--host", http_addr])?);
    ensure!(said.contains("not a roam host") && !said.contains("bytes"), "{said}");

    // A name the host does not hold: said once, even asked again with --refresh.
    let said = stderr(roam(args![
        "run",
        "nosuch",
        "--from",
        addr,
        "--trust",
        fx.trust_dir(),
        "--cache",
        fx.path().join("c"),
        "--refresh"
    ])?);
    ensure!(said.matches("no module named nosuch").count() == 1, "{said}");

    // The local trust store is not "this host".
    let bob_only = fx.path().join("bob-only");
    std::fs::create_dir_all(&bob_only)?;
    std::fs::copy(fx.keys_dir().join("bob.pub"), bob_only.join("bob.pub"))?;
    let said = stderr(roam(args![
        "run",
        "validator",
        "--from",
        addr,
        "--trust",
        bob_only,
        "--cache",
        fx.path().join("c2"),
        "--input",
        "{}"
    ])?);
    ensure!(said.contains("not in the trust store") && !said.contains("this host"), "{said}");

    // `--input-file -` is stdin.
    let mut child = Command::new(roam_tests::roam_bin()?)
        .args(args!["run", "validator", "--from", addr, "--trust", fx.trust_dir(), "--cache", fx.path().join("c3")])
        .args(["--input-file", "-"])
        .env("ROAM_KNOWN_HOSTS", fx.path().join("known_hosts"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let order = r#"{"id": 7, "region": "north", "product": "widget", "quantity": 3, "unit_cents": 250, "total_cents": 750, "day": 12}"#;
    std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, order.as_bytes())?;
    let out = child.wait_with_output()?;
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| stderr(out.clone()))?;
    ensure!(verdict["id"] == 7, "{verdict}");

    // A capability that is not KIND:NAME is refused at signing.
    let wasm = roam_tests::agent_wasm("sales_by_region")?;
    let said = stderr(roam(args![
        "sign",
        wasm,
        "--key",
        fx.key_path("alice"),
        "--kind",
        "query",
        "--name",
        "q",
        "--version",
        "1.0.0",
        "--cap",
        "sales",
        "-o",
        fx.path().join("q.wasm")
    ])?);
    ensure!(said.contains("KIND:NAME") && !fx.path().join("q.wasm").exists(), "{said}");

    // A policy entry for a key the store does not hold, or a capability of no kind, is warned of.
    let policy = fx.trust_dir().join("policy.toml");
    let mut text = std::fs::read_to_string(&policy)?;
    text.push_str("\n[keys.alcie]\ncapabilities = [\"tables:sales\"]\n");
    std::fs::write(&policy, text)?;
    let said = stderr(roam(args!["verify", fx.path().join("validator.wasm"), "--trust", fx.trust_dir()])?);
    ensure!(said.contains("alcie.pub") && said.contains("tables:sales"), "{said}");
    host.stop()
}

/// A configuration file need not repeat what the flags give, and a host that does not start
/// leaves no data directory behind.
#[test]
fn flags_complete_the_file_and_a_failed_start_leaves_nothing() -> Result<()> {
    let fx = Fixture::new()?;
    let config = fx.write("host.toml", "name = \"from-file\"\n")?;
    let data = fx.path().join("data-file");
    let host = HostProcess::spawn(args!["--config", config, "--trust", fx.trust_dir(), "--data-dir", data])?;
    host.stop()?;
    let said = String::from_utf8_lossy(&roam(args!["host", "--config", config])?.stderr).into_owned();
    ensure!(said.contains("--trust"), "{said}");

    for (why, extra) in [("a missing table", vec!["--table", "sales=/nonexistent/sales.csv"]), ("a taken port", vec![])]
    {
        let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
        let listen = if extra.is_empty() { taken.local_addr()?.to_string() } else { "127.0.0.1:0".to_owned() };
        let fresh = fx.path().join(format!("fresh-{}", why.len()));
        let mut args = vec!["host".to_owned(), "--trust".into(), fx.trust_dir().display().to_string()];
        args.extend(["--data-dir".into(), fresh.display().to_string(), "--listen".into(), listen]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let out = roam(&args)?;
        ensure!(!out.status.success(), "{why}: the host started");
        ensure!(!fresh.exists(), "{why}: {} was left behind", fresh.display());
    }
    Ok(())
}

/// A CSV table's column types are reported at load; a column mixing numbers and words is
/// refused with the line to fix, unless host.toml declares its type.
#[test]
fn csv_columns_are_reported_and_mixed_ones_refused_unless_declared() -> Result<()> {
    let fx = Fixture::new()?;
    let csv = fx.write("visits.csv", "id,day,amount\n1,10,2.5\n2,forty,3\n3,,4\n")?;
    let data = fx.path().join("refused-data");
    let table = format!("visits={}", csv.display());
    let out = roam(args![
        "host",
        "--trust",
        fx.trust_dir(),
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--table",
        table
    ])?;
    let said = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "a mixed column loaded: {said}");
    ensure!(said.contains("\"day\"") && said.contains("\"forty\" on line 3") && said.contains("columns"), "{said}");

    let config = fx.write(
        "host.toml",
        "[[resources]]\nname = \"visits\"\ntype = \"table\"\nsource = \"visits.csv\"\ncolumns = { day = \"text\" }\n",
    )?;
    let host = HostProcess::spawn(args!["--config", config, "--trust", fx.trust_dir()])?;
    let log = host.stderr();
    host.stop()?;
    ensure!(log.contains("day TEXT (declared)") && log.contains("id INTEGER (inferred)"), "{log}");
    ensure!(log.contains("amount REAL (inferred)") && log.contains("\"2.5\" on line 2"), "{log}");
    Ok(())
}
