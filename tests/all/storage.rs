//! A host's storage failing under it: a disk that fills up, and a state database that is
//! damaged or is not a database at all. Each ends in an error that says what happened, and
//! nothing is lost: what could not be written is refused, and retried once it can be.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use roam_host::client::Client;
use roam_host::protocol::{ErrorKind, Request, Response};
use roam_keys::Kind;

use crate::agents::{Net, agent, check_hop_counter, ended, launch, result_json};
use crate::crash::{free_port, host_args, start};

/// The size of the small disk the full-disk host runs on.
const DISK: &str = "32m";

/// Fills the file system holding `dir` with one file, until the disk says it is full.
fn fill(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![0u8; 1 << 16];
    loop {
        match file.write_all(&block).and_then(|()| file.sync_data()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return Ok(path),
            Err(e) => return Err(e).context("filling the disk"),
        }
    }
}

/// A host whose data directory is a small disk of its own that the test fills up: an agent
/// that arrives while the disk is full is refused, kept by its sender, and lands once there is
/// space again; a publish is refused with a clear error; the host keeps serving throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_clearly_and_loses_nothing() -> Result<()> {
    let net = Net::new(&["home", "a"])?;
    let (home_port, a_port) = (net.port("home")?, net.port("a")?);
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let mut home = Command::new(roam_tests::roam_bin()?);
    home.args(host_args(&net, "home", home_port));
    let _home = start(&net, "home", home)?;

    // Host a runs in a mount namespace of its own (unprivileged, through a user namespace),
    // with a size-limited tmpfs mounted on its data directory.
    let data = net.path("data-a");
    std::fs::create_dir_all(&data)?;
    let mut a = Command::new("unshare");
    a.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(format!("mount -t tmpfs -o size={DISK} tmpfs \"$0\" && exec \"$@\""))
        .arg(&data)
        .arg(roam_tests::roam_bin()?)
        .args(host_args(&net, "a", a_port));
    let mut a = start(&net, "a", a)?;
    // The host's view of its data directory, from outside its namespace.
    let disk = PathBuf::from(format!("/proc/{}/root", a.child.id())).join(data.strip_prefix("/")?);

    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let input = serde_json::json!({ "hosts": [addr(a_port)] });
    let first = launch(&addr(home_port), module.clone(), input.clone()).await?;
    let info = ended(&addr(home_port), &first, Duration::from_secs(30)).await?;
    check_hop_counter(&result_json(&info)?, &["a"])?;

    let filler = fill(&disk)?;

    // An agent that arrives now is refused by the receiver and kept by its sender: the home
    // parks it (it would be failed had a refused it for good, or finished had a taken it), and
    // a's log says why it refused.
    let second = launch(&addr(home_port), module.clone(), input).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = agent(&addr(home_port), &second).await?;
        let log = std::fs::read_to_string(net.path("a.log"))?;
        if info.state == "parked" && log.contains("the disk is full") {
            break;
        }
        assert!(!matches!(info.state.as_str(), "finished" | "failed"), "{info:?}");
        if Instant::now() > deadline {
            bail!("the agent was not parked on a's full disk within 30 s: {info:?}\n--- a's log ---\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A publish is refused with a clear error, and nothing of it is kept.
    let other = roam_tests::sign_with(
        &net.alice,
        &std::fs::read(roam_tests::agent_wasm("stock_survey")?)?,
        Kind::Agent,
        "survey",
        "1.0.0",
        &[],
        (0, 3600),
    )?;
    let mut client = Client::connect(&addr(a_port)).await?;
    match client.request(&Request::Publish { module: other.clone() }).await? {
        Response::Error(e) => {
            assert_eq!(e.kind, ErrorKind::Busy, "{e:?}");
            assert!(e.message.contains("the disk is full"), "{e:?}");
        }
        other => bail!("a publish on a full disk was answered with {other:?}"),
    }
    assert!(a.child.try_wait()?.is_none(), "the host died on a full disk");

    // Space again: the refused agent lands and finishes, the publish goes through.
    std::fs::remove_file(&filler)?;
    let info = ended(&addr(home_port), &second, Duration::from_secs(30)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    check_hop_counter(&result_json(&info)?, &["a"])?;
    match client.request(&Request::Publish { module: other }).await? {
        Response::Published(_) => {}
        other => bail!("a publish after space was freed was answered with {other:?}"),
    }
    let leftovers: Vec<_> = std::fs::read_dir(disk.join("modules"))?
        .map(|e| e.map(|e| e.file_name()))
        .filter(|n| n.as_ref().is_ok_and(|n| n.to_string_lossy().ends_with(".tmp")))
        .collect();
    assert!(leftovers.is_empty(), "half-written files were left behind: {leftovers:?}");
    Ok(())
}

/// Runs `roam host` on `net`'s host `name` and expects it to refuse to start; returns what it
/// said.
fn refused_start(net: &Net, name: &str) -> Result<String> {
    let mut child = Command::new(roam_tests::roam_bin()?)
        .args(host_args(net, name, free_port()?))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("the host started on a damaged state database");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    assert!(!out.status.success());
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A state database overwritten with garbage, or cut short, stops the host at start with an
/// error that names the file and the way out; the file itself is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_database_stops_the_host_with_a_clear_error() -> Result<()> {
    let net = Net::new(&["home"])?;
    let port = net.port("home")?;
    let mut cmd = Command::new(roam_tests::roam_bin()?);
    cmd.args(host_args(&net, "home", port));
    let home = start(&net, "home", cmd)?;
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    launch(&format!("127.0.0.1:{port}"), module, serde_json::json!({ "hosts": [] })).await?;
    drop(home);
    let db = net.path("data-home/state.db");
    // Fold the write-ahead log in, so that the database file holds everything.
    rusqlite::Connection::open(&db)?.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")?;
    let good = std::fs::read(&db)?;

    let mut garbage = good.clone();
    garbage[..100].fill(0x5a);
    for (what, bytes) in [("garbage", garbage), ("cut short", good[..good.len() / 2].to_vec())] {
        std::fs::write(&db, &bytes)?;
        let said = refused_start(&net, "home")?;
        assert!(said.contains("is corrupt") && said.contains("restore it from a backup"), "{what}: {said}");
        assert!(said.contains(&db.display().to_string()), "{what}: the error does not name the file: {said}");
        assert_eq!(std::fs::read(&db)?, bytes, "{what}: the damaged file was changed");
    }
    Ok(())
}
