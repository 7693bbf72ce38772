//! The agent commands across real processes: `roam launch`, `roam agents`, `roam recall`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::agents::{Net, check_hop_counter};

/// `roam launch --wait`, `roam agents` and `roam recall`, as a person would use them.
#[test]
fn launch_agents_and_recall_from_the_command_line() -> Result<()> {
    use roam_tests::{roam_err, roam_ok};
    // "down" is a peer that never starts.
    let net = Net::new(&["home", "a", "down"])?;
    let host = |name: &str| net.process(name, &[]);
    let home = host("home")?;
    let a = host("a")?;
    let module = net.path("hop.wasm");
    std::fs::write(&module, net.sign_agent("hop_counter", "hop-counter", &[])?)?;
    let home_addr = home.addr.to_string();

    let input = serde_json::json!({ "hosts": [a.addr.to_string(), a.addr.to_string()] }).to_string();
    let launched =
        roam_tests::roam(roam_tests::args!["launch", module, "--host", home_addr, "--input", input, "--wait"])?;
    let stderr = String::from_utf8_lossy(&launched.stderr).into_owned();
    anyhow::ensure!(launched.status.success(), "{stderr}");
    // stdout holds the result alone (`roam launch --wait | jq`); the id is a note on stderr.
    let result: serde_json::Value = serde_json::from_slice(&launched.stdout)?;
    let id = stderr.lines().find_map(|l| l.strip_prefix("launched agent ")).context("no id on stderr")?;
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
    // Each hop away from home shows the receipt its host signed for the agent.
    let a_key = roam_keys::PublicKey::load(&net.path("peers/a.pub"))?.to_hex();
    let receipts = detail.lines().filter(|l| l.contains(&format!("receipt signed by {}…", &a_key[..16]))).count();
    assert_eq!(receipts, 2, "{detail}");

    // An agent waiting for a destination that is down can be recalled home.
    let dead = format!("127.0.0.1:{}", net.port("down")?);
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
    // Listed newest first, filtered by state, with when each was launched and ended.
    let listed: serde_json::Value =
        serde_json::from_str(&roam_ok(roam_tests::args!["agents", "--host", home_addr, "--json"])?)?;
    let listed = listed.as_array().context("a list")?;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["id"], id, "the newest is not first: {listed:?}");
    assert!(listed[0]["launched"].is_string() && listed[0]["ended"].is_null(), "{:?}", listed[0]);
    assert!(listed[1]["state"] == "finished" && listed[1]["ended"].is_string(), "{:?}", listed[1]);
    let parked = roam_ok(roam_tests::args!["agents", "--host", home_addr, "--state", "parked"])?;
    assert!(parked.contains(id) && !parked.contains("finished") && parked.lines().count() == 2, "{parked}");
    let said = roam_tests::roam_err(roam_tests::args!["agents", "--host", home_addr, "--state", "done"])?;
    assert!(said.contains("parked") && said.contains("recalled"), "{said}");

    let said = roam_ok(roam_tests::args!["recall", id, "--host", home_addr])?;
    assert!(said.starts_with("recall ordered: agent ") && said.contains("last heard of"), "{said}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let detail = loop {
        let detail = roam_ok(roam_tests::args!["agents", "--host", home_addr, id])?;
        if detail.contains("state:    recalled") {
            break detail;
        }
        if Instant::now() > deadline {
            bail!("the agent never came home: {detail}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // It was recalled before it ever left home: it hands over what it had then.
    assert!(detail.contains("recalled before it left home") && detail.contains("recall:   ordered"), "{detail}");
    assert!(detail.contains(r#"result:   {"arrivals":0,"#), "{detail}");
    // Too late is not an error: the recall says how the agent ended.
    let late = roam_tests::roam(roam_tests::args!["recall", id, "--host", home_addr])?;
    assert!(late.status.success(), "{late:?}");
    assert!(String::from_utf8_lossy(&late.stderr).contains("had already ended"), "{late:?}");
    let err = roam_err(roam_tests::args!["recall", "feedface", "--host", home_addr])?;
    assert!(err.contains("this host knows no agent feedface"), "{err}");

    // `--wait` brings back what the agent carried: it visited a, then found its next stop down.
    let input = serde_json::json!({ "hosts": [a.addr.to_string(), dead] }).to_string();
    let id = roam_ok(roam_tests::args!["launch", module, "--host", home_addr, "--input", input])?;
    let id = id.trim();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !roam_ok(roam_tests::args!["agents", "--host", home_addr, id])?.contains("state:    parked") {
        if Instant::now() > deadline {
            bail!("the agent never parked");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = roam_tests::roam(roam_tests::args!["recall", id, "--host", home_addr, "--wait", "--timeout", "60s"])?;
    let (stdout, stderr) = (String::from_utf8_lossy(&waited.stdout), String::from_utf8_lossy(&waited.stderr));
    assert!(waited.status.success(), "{stderr}");
    assert!(stderr.contains("recall ordered") && stderr.contains("is home: recalled home after 2 hops"), "{stderr}");
    check_hop_counter(&serde_json::from_str(&stdout)?, &["a"])?;
    let err = roam_err(roam_tests::args!["agents", "--host", home_addr, "feedface"])?;
    assert!(err.contains("knows no agent"), "{err}");
    home.stop()?;
    a.stop()?;
    Ok(())
}
