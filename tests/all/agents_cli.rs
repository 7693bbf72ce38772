//! The agent commands across real processes: `roam launch`, `roam agents`, `roam recall`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agents::{Net, check_hop_counter};

/// `roam launch --wait`, `roam agents` and `roam recall`, as a person would use them.
#[test]
fn launch_agents_and_recall_from_the_command_line() -> Result<()> {
    use roam_tests::{HostProcess, roam_err, roam_ok};
    let net = Net::new(&["home", "a"])?;
    let host = |name: &str| -> Result<HostProcess> {
        let key = net.path(&format!("host-keys/{name}.key"));
        let (trust, peers, data) = (net.path("trust"), net.path("peers"), net.path(&format!("data-{name}")));
        HostProcess::spawn(roam_tests::args![
            "--name",
            name,
            "--key",
            key,
            "--trust",
            trust,
            "--peers",
            peers,
            "--data-dir",
            data
        ])
    };
    let home = host("home")?;
    let a = host("a")?;
    let module = net.path("hop.wasm");
    std::fs::write(&module, net.sign_agent("hop_counter", "hop-counter", &[])?)?;
    let home_addr = home.addr.to_string();

    let input = serde_json::json!({ "hosts": [a.addr.to_string(), a.addr.to_string()] }).to_string();
    let out = roam_ok(roam_tests::args!["launch", module, "--host", home_addr, "--input", input, "--wait"])?;
    let (id, result) = out.split_once('\n').context("no result after the id")?;
    let result: serde_json::Value = serde_json::from_str(result)?;
    check_hop_counter(&result, &["a", "a"])?;

    let list = roam_ok(roam_tests::args!["agents", "--host", home_addr])?;
    assert!(list.lines().any(|l| l.starts_with(id) && l.contains("finished")), "{list}");
    // Reports travel on their own: the last arrival may reach the home just after the agent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let detail = loop {
        let detail = roam_ok(roam_tests::args!["agents", "--host", home_addr, id])?;
        if detail.contains("hop   2  a (") || Instant::now() > deadline {
            break detail;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(detail.contains("state:    finished") && detail.contains("hop   2  a ("), "{detail}");

    // An agent waiting for a destination that is down can be recalled home.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let input = serde_json::json!({ "hosts": [dead] }).to_string();
    let id = roam_ok(roam_tests::args!["launch", module, "--host", home_addr, "--input", input])?;
    let id = id.trim();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !roam_ok(roam_tests::args!["agents", "--host", home_addr, id])?.contains("state:    parked") {
        if Instant::now() > deadline {
            bail!("the agent never parked");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let said = roam_ok(roam_tests::args!["recall", id, "--host", home_addr])?;
    assert!(said.contains("recalled"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !roam_ok(roam_tests::args!["agents", "--host", home_addr, id])?.contains("state:    recalled") {
        if Instant::now() > deadline {
            bail!("the agent never came home");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = roam_err(roam_tests::args!["recall", id, "--host", home_addr])?;
    assert!(err.contains("already ended"), "{err}");
    let err = roam_err(roam_tests::args!["agents", "--host", home_addr, "feedface"])?;
    assert!(err.contains("knows no agent"), "{err}");
    home.stop()?;
    a.stop()?;
    Ok(())
}
