//! Modules built against a libc (WASI preview 1): their output lands in the host's log, their
//! clock and random numbers work, and what would leave the sandbox fails inside the module.

use anyhow::{Context, Result, bail, ensure};
use roam_host::client::{Client, cbor_to_json, json_to_cbor};
use roam_host::protocol::{ModuleRef, Request, Response};
use roam_keys::Kind;

use crate::agents::Net;

/// The example built for `wasm32-wasip1` by `cargo xtask agents`.
fn wasi_hello() -> Result<std::path::PathBuf> {
    roam_tests::wasip1_wasm("wasi_hello")
}

/// Evaluates `module` (signed as a query) on `host` with `input`; its result as JSON.
async fn eval(host: &str, module: Vec<u8>, input: serde_json::Value) -> Result<serde_json::Value> {
    let mut client = Client::connect(host).await?;
    match client.request(&Request::Eval { module: ModuleRef::Bytes(module), input: json_to_cbor(&input) }).await? {
        Response::Result(bytes) => cbor_to_json(&bytes).map_err(anyhow::Error::msg),
        other => bail!("the evaluation failed: {other:?}"),
    }
}

/// Waits until the host's log holds `line`.
fn logged(host: &roam_tests::HostProcess, line: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !host.stderr().contains(line) {
        ensure!(std::time::Instant::now() < deadline, "the host never logged {line:?}:\n{}", host.stderr());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_with_std_on_wasip1_prints_to_the_host_log_and_reads_no_file() -> Result<()> {
    let net = Net::new(&["data"])?;
    let host = net.process("data", &[])?;
    let module = net.sign_file(&wasi_hello()?, Kind::Query, "wasi-hello")?;
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let answer = eval(&host.addr.to_string(), module, serde_json::json!({ "name": "ada" })).await?;

    ensure!(answer["greeting"] == "hello, ada", "{answer}");
    ensure!(answer["words"] == 2, "{answer}");
    // Nothing of the host's process: no arguments, no environment.
    ensure!(answer["args"] == 0 && answer["env"] == 0, "{answer}");
    // The host's clock, not zero.
    let now = answer["now"].as_u64().context("no time")?;
    ensure!(now + 5 >= before && now <= before + 600, "the module's clock says {now}, the test's {before}");
    // No file is reachable: the module got an error it could report, not a trap.
    let file = answer["file"].as_str().context("no file answer")?;
    ensure!(file.starts_with("error:"), "the module read a file: {file}");
    // stdout as info, stderr as a warning, each line once, named by the module.
    let host = tokio::task::spawn_blocking(move || {
        logged(&host, "hello, ada from wasm32-wasip1")?;
        logged(&host, "a line on stderr")?;
        anyhow::Ok(host)
    })
    .await??;
    let log = host.stderr();
    let line = log.lines().find(|l| l.contains("hello, ada from")).context("no line")?;
    ensure!(line.contains("INFO") && line.contains("wasi-hello@1.0.0"), "{line}");
    let line = log.lines().find(|l| l.contains("a line on stderr")).context("no line")?;
    ensure!(line.contains("WARN"), "{line}");
    ensure!(log.matches("hello, ada from").count() == 1, "{log}");
    Ok(())
}

/// Code on demand runs a WASI module in the client, called from async code as an application
/// would: wasmtime-wasi's synchronous calls must not block a Tokio thread.
#[tokio::test(flavor = "current_thread")]
async fn a_wasi_code_module_runs_on_demand_called_from_async_code() -> Result<()> {
    let net = Net::new(&["client"])?;
    let module = net.sign_file(&wasi_hello()?, Kind::Code, "wasi-hello")?;
    let trust = roam_keys::TrustStore::load(&net.path("trust"))?;
    let cod = roam_host::local::CodeOnDemand::builder(trust).cache_dir(net.path("cache")).build()?;
    let loaded = cod.load(module)?;
    let answer: serde_json::Value = cod.call(&loaded, &serde_json::json!({ "name": "grace" }))?;
    ensure!(answer["greeting"] == "hello, grace" && answer["words"] == 2, "{answer}");
    Ok(())
}

/// What a module built for another ABI hears: the rule it broke, in the ABI's own terms, and
/// where the ABI is described; not advice about one language's SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_of_the_wrong_shape_is_told_which_rule_of_the_abi_it_breaks() -> Result<()> {
    let net = Net::new(&["client"])?;
    let trust = roam_keys::TrustStore::load(&net.path("trust"))?;
    let cod = roam_host::local::CodeOnDemand::builder(trust).cache_dir(net.path("cache")).build()?;
    let sign = |wat: &str| -> Result<Vec<u8>> {
        roam_tests::sign_with(&net.alice, &wat::parse_str(wat)?, Kind::Code, "shape", "1.0.0", &[], (0, 3600))
    };
    let cases = [
        (
            r#"(module (memory (export "memory") 1) (func $f) (start $f) (func (export "roam_query")))"#,
            &["start function", "_initialize", "sdk/ABI.md"][..],
        ),
        (
            r#"(module (import "env" "now" (func)) (memory (export "memory") 1) (func (export "roam_query")))"#,
            &["env", "wasi_snapshot_preview1", "sdk/ABI.md"][..],
        ),
        (
            r#"(module (memory (export "memory") 1) (func (export "_start")))"#,
            &["roam_query", "_start", "reactor", "sdk/ABI.md"][..],
        ),
    ];
    for (wat, said) in cases {
        let error = match cod.load(sign(wat)?) {
            Err(e) => e.to_string(),
            Ok(module) => match cod.call_raw(&module, vec![0xa0]) {
                Err(e) => e.to_string(),
                Ok(_) => bail!("{wat} ran"),
            },
        };
        for words in said {
            ensure!(error.contains(words), "{wat}: the error does not say {words:?}: {error}");
        }
        ensure!(!error.contains("roam SDK"), "{error}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_with_wasi_libc_uses_printf_and_malloc_and_its_output_lands_in_the_host_log() -> Result<()> {
    let net = Net::new(&["data"])?;
    let host = net.process("data", &[])?;
    let module = net.sign_file(&roam_tests::c_wasm("hello_wasi")?, Kind::Query, "hello-wasi")?;
    let answer = eval(&host.addr.to_string(), module, serde_json::json!({ "name": "ada" })).await?;
    ensure!(answer == serde_json::json!({ "greeting": "hello, ada", "letters": 3 }), "{answer}");
    let host = tokio::task::spawn_blocking(move || {
        logged(&host, "hello_wasi: hello, ada (10 bytes)")?;
        anyhow::Ok(host)
    })
    .await??;
    ensure!(host.stderr().contains("hello-wasi@1.0.0"), "{}", host.stderr());
    Ok(())
}

/// A wasi-libc agent: its constructor (run by the reactor's `_initialize`) runs once, at launch;
/// on every arrival its memory, libc's heap included, is restored instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_agents_constructor_runs_once_and_its_libc_heap_travels() -> Result<()> {
    let net = Net::new(&["home", "a", "b"])?;
    let (_, home) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let (_, b) = net.start(&net.config("b", "trust")?).await?;
    let module = net.sign_file(&roam_tests::c_wasm("journey_wasi")?, Kind::Agent, "journey-wasi")?;
    let route = [a.addr(), b.addr(), a.addr()].map(|h| h.to_string());
    let home_addr = home.addr().to_string();
    let id = crate::agents::launch(&home_addr, module, serde_json::json!({ "hosts": route })).await?;
    let info = crate::agents::ended(&home_addr, &id, std::time::Duration::from_secs(60)).await?;
    ensure!(info.state == "finished", "{info:?}");
    let result = crate::agents::result_json(&info)?;
    ensure!(result == serde_json::json!({ "constructed": 1, "arrivals": 3, "seen": "a,b,a" }), "{result}");
    for running in [a, b, home] {
        running.shutdown().await;
    }
    Ok(())
}
