//! README's "Using roam" section, run as written: every `sh` block, in order, in one bash
//! session, so the README cannot drift from what roam does. Where the README starts a host in a
//! terminal of its own (a command that begins `roam host`), the harness starts it in the
//! background and waits until it listens. The only changes to the text: the README's ports
//! (77xx) become free ports, and its scratch directory a temporary one.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use roam_tests::repo_root;

/// The section whose shell blocks are run: from its heading to the next `## ` heading.
const SECTION: &str = "## Using roam";
const SCRATCH: &str = "/tmp/roam-try";

/// The `sh` blocks of the section, in order.
fn blocks(readme: &str) -> Result<Vec<String>> {
    let start = readme.find(SECTION).context("README has no \"Using roam\" section")?;
    let rest = &readme[start + SECTION.len()..];
    let section = rest.find("\n## ").map_or(rest, |end| &rest[..end]);
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    ensure!(current.is_none(), "an sh block in README is not closed");
    Ok(blocks)
}

/// The block with each `roam host` command (its continuation lines joined) started in the
/// background, the harness waiting until it listens.
fn with_hosts_in_background(block: &str, hosts: &mut usize) -> String {
    let mut out = String::new();
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        if !line.starts_with("roam host ") {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        let mut command = line.to_owned();
        while command.ends_with('\\') {
            command.pop();
            command.push_str(lines.next().unwrap_or_default());
        }
        *hosts += 1;
        let n = *hosts;
        out.push_str(&format!(
            "{command} >\"$README_LOGS/host-{n}.out\" 2>\"$README_LOGS/host-{n}.log\" &\n\
             readme_hosts+=($!); readme_wait \"$README_LOGS/host-{n}\" $!\n"
        ));
    }
    out
}

#[test]
fn the_readme_usage_runs_as_written() -> Result<()> {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let blocks = blocks(&readme)?;
    ensure!(blocks.len() >= 4, "expected the usage, code on demand, agent and cluster blocks: {}", blocks.len());

    let dir = tempfile::tempdir()?;
    let scratch = dir.path().join("try");
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs)?;

    // Each port the README names becomes a port free here.
    let mut ports = BTreeMap::new();
    let mut listeners = Vec::new();
    let mut script = String::from(
        "set -euo pipefail\n\
         readme_hosts=()\n\
         trap 'for p in \"${readme_hosts[@]}\"; do kill \"$p\" 2>/dev/null || true; done; wait' EXIT\n\
         readme_wait() {\n\
           for _ in $(seq 1200); do\n\
             grep -q 'listening on' \"$1.out\" && return 0\n\
             kill -0 \"$2\" 2>/dev/null || { echo \"the host stopped:\" >&2; cat \"$1.log\" >&2; return 1; }\n\
             sleep 0.025\n\
           done\n\
           echo \"the host did not listen within 30 s\" >&2; cat \"$1.log\" >&2; return 1\n\
         }\n\
         set -x\n",
    );
    let mut hosts = 0;
    for block in &blocks {
        let mut block = with_hosts_in_background(block, &mut hosts).replace(SCRATCH, &scratch.to_string_lossy());
        for port in 7700..7800u16 {
            let written = format!("127.0.0.1:{port}");
            if block.contains(&written) {
                let free = *match ports.get(&port) {
                    Some(free) => free,
                    None => {
                        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                        let free = listener.local_addr()?.port();
                        listeners.push(listener);
                        ports.entry(port).or_insert(free)
                    }
                };
                block = block.replace(&written, &format!("127.0.0.1:{free}"));
            }
        }
        script.push_str(&block);
    }
    // The ports were held so that nothing else took them while the script was written.
    drop(listeners);

    let roam_dir = roam_tests::roam_bin()?.parent().context("the roam binary's directory")?.to_owned();
    let path = std::env::join_paths(
        std::iter::once(roam_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )?;
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home)?;
    let mut command = Command::new("bash");
    command.arg("-c").arg(&script).current_dir(&root).env("PATH", path).env("HOME", &home);
    command.env("README_LOGS", &logs);
    for var in ["ROAM_IDENTITY", "ROAM_HOST", "ROAM_TRUST", "ROAM_CACHE", "ROAM_KNOWN_HOSTS", "RUST_LOG"] {
        command.env_remove(var);
    }
    command.env_remove("XDG_CONFIG_HOME").env_remove("XDG_CACHE_HOME");
    let out = command.output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut host_logs = String::new();
    for n in 1..=hosts {
        let log = std::fs::read_to_string(logs.join(format!("host-{n}.log"))).unwrap_or_default();
        host_logs.push_str(&format!("--- host {n} ---\n{log}\n"));
    }
    ensure!(
        out.status.success(),
        "README's commands failed ({}):\n{stderr}\n--- stdout ---\n{stdout}\n{host_logs}",
        out.status
    );
    // What the README promises each step shows.
    for shown in ["\"regions\"", "\"valid\": true", "\"total_value_cents\"", "is home"] {
        ensure!(stdout.contains(shown) || stderr.contains(shown), "the output lacks {shown}:\n{stdout}\n{stderr}");
    }
    Ok(())
}
