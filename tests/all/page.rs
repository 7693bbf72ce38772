//! The status page in a real browser: headless Chromium, driven through ChromeDriver's
//! WebDriver protocol (plain HTTP and JSON), watches an agent move between hosts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::agents::{Net, ended, launch};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the browser may take to start, and the page to show what is awaited.
const DEADLINE: Duration = Duration::from_secs(60);

/// One HTTP/1.1 exchange with `addr`: the status code and the body.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // ChromeDriver keeps the connection open whatever the request says: read by the length.
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|l| l.trim().parse::<usize>().ok());
            let whole = match length {
                Some(length) => body.len() >= length,
                None if lower.contains("transfer-encoding: chunked") => {
                    body.contains("\r\n0\r\n\r\n") || body.starts_with("0\r\n")
                }
                None => n == 0,
            };
            if whole {
                let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("no status code")?;
                let body = if length.is_none() && lower.contains("chunked") { dechunk(body)? } else { body.to_owned() };
                return Ok((code, body));
            }
        }
        ensure!(n > 0, "the connection closed before the whole answer");
    }
}

fn dechunk(mut body: &str) -> Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("a chunk without its size")?;
        let size = usize::from_str_radix(size.trim(), 16)?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).context("a chunk shorter than its size")?);
        body = rest.get(size + 2..).context("a chunk without its end")?;
    }
}

/// A ChromeDriver process and one headless Chromium session, both ended on drop.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Result<Self> {
        for path in [CHROMIUM, CHROMEDRIVER] {
            ensure!(
                std::path::Path::new(path).is_file(),
                "{path} is missing: `cargo xtask test` installs Debian's chromium and chromium-driver"
            );
        }
        let (driver, addr) = Self::driver()?;
        let profile = tempfile::tempdir()?;
        let mut browser = Self { driver, addr, session: String::new(), profile };
        // The flags keep Chromium from reaching out to the network: this machine may be offline.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", browser.profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let answer = browser.call("POST", "/session", Some(&capabilities))?;
        browser.session = answer["sessionId"].as_str().context("no session id")?.to_owned();
        Ok(browser)
    }

    /// A ready chromedriver and its address. Its port is one that was free a moment ago:
    /// another process may take it first, and then chromedriver exits and another is tried.
    fn driver() -> Result<(Child, SocketAddr)> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut driver = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start chromedriver")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if http(addr, "GET", "/status", None).is_ok_and(|(_, b)| b.contains("\"ready\":true")) {
                    return Ok((driver, addr));
                }
                if Instant::now() > deadline {
                    let _ = driver.kill();
                    let _ = driver.wait();
                    bail!("chromedriver did not become ready");
                }
                if driver.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (code, text) = http(self.addr, method, path, body)?;
        let answer: Value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
        ensure!(code == 200, "{method} {path}: {code} {answer}");
        Ok(answer["value"].clone())
    }

    fn open(&self, url: &str) -> Result<()> {
        self.call("POST", &format!("/session/{}/url", self.session), Some(&json!({ "url": url })))?;
        Ok(())
    }

    /// Runs `script` (a function body) in the page; what it returns.
    fn run(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            &format!("/session/{}/execute/sync", self.session),
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// Runs `script` until what it returns is not null; fails after the deadline.
    fn until(&self, script: &str, what: &str) -> Result<Value> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let value = self.run(script)?;
            if !value.is_null() {
                return Ok(value);
            }
            if Instant::now() > deadline {
                let page = self.run("return document.body.innerText")?;
                bail!("the page never showed {what}; it shows:\n{}", page.as_str().unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A PNG of the window.
    fn screenshot(&self) -> Result<Vec<u8>> {
        let encoded = self.call("GET", &format!("/session/{}/screenshot", self.session), None)?;
        base64(encoded.as_str().context("no screenshot")?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut bits, mut held) = (0u32, 0);
    for c in text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()) {
        bits = (bits << 6) | u32::from(value(c).context("not base64")?);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
        }
    }
    Ok(out)
}

/// Where tests leave what a person may want to look at: `target/test-artifacts`.
fn artifacts() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe.ancestors().nth(3).context("the test executable is not under a target directory")?;
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// An event stream of the status listener at `addr`, open.
fn taken_stream(addr: SocketAddr) -> Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    write!(stream, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0; 12];
    stream.read_exact(&mut head)?;
    ensure!(head.ends_with(b"200"), "{}", String::from_utf8_lossy(&head));
    Ok(stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_shows_an_agent_moving_between_hosts() -> Result<()> {
    // A host named as a property every JavaScript object has must still be drawn.
    let net = Net::new(&["home", "a", "constructor"])?;
    let (home, home_run) = net.start(&net.config("home", "trust")?).await?;
    let (_, a) = net.start(&net.config("a", "trust")?).await?;
    let (_, b) = net.start(&net.config("constructor", "trust")?).await?;
    let page = roam_host::status::start(home, "127.0.0.1:0".parse()?).await?;
    let browser = tokio::task::spawn_blocking(Browser::start).await??;
    let browser = std::sync::Arc::new(browser);
    let url = format!("http://{page}/");
    let opened = browser.clone();
    tokio::task::spawn_blocking(move || {
        // Every event stream this machine may hold is taken: the page is refused one, says so,
        // and gets one once they close.
        let taken = (0..4).map(|_| taken_stream(page)).collect::<Result<Vec<_>>>()?;
        opened.open(&url)?;
        let live = |is: &str| format!("return document.getElementById('live').textContent === '{is}' ? true : null");
        opened.until(&live("reconnecting"), "it says it is away")?;
        drop(taken);
        opened.until(&live("live"), "it is live")
    })
    .await??;

    // Launched after the page opened: what it shows came over its event stream.
    let module = net.sign_agent("hop_counter", "hop-counter", &[])?;
    let home_addr = home_run.addr().to_string();
    let route: Vec<String> = [&a, &b, &a].iter().map(|h| h.addr().to_string()).collect();
    let id = launch(&home_addr, module, json!({ "hosts": route })).await?;
    let info = ended(&home_addr, &id, Duration::from_secs(60)).await?;
    assert_eq!(info.state, "finished", "{info:?}");
    let info = crate::agents::with_route(&home_addr, &id, info.hops as usize).await?;
    let hosts: Vec<String> = info.route.iter().map(|v| v.host.clone()).collect();
    ensure!(hosts == ["home", "a", "constructor", "a"], "the home knows the route {hosts:?}");

    // Its route, and where it is now: home again.
    let hosts_shown = [hosts.clone(), vec!["home".to_owned()]].concat();
    let shown = browser.clone();
    let (row, svg, png) = tokio::task::spawn_blocking(move || {
        let row = shown.until(
            &format!(
                "const row = document.querySelector('tr.agent[data-agent=\"{id}\"]');
                 if (!row || row.dataset.state !== 'finished' || row.querySelectorAll('.route .hop').length !== {}) return null;
                 return {{ state: row.dataset.state, hops: row.dataset.hops, location: row.dataset.location,
                          route: [...row.querySelectorAll('.route .hop')].map(h => h.dataset.host) }};",
                hosts.len() + 1
            ),
            "the agent's whole route",
        )?;
        let svg = shown.run(&format!(
            "return {{ hosts: [...document.querySelectorAll('#map text')].map(t => t.textContent),
                      routes: document.querySelectorAll('#map polyline[data-agent=\"{id}\"]').length }}"
        ))?;
        anyhow::Ok((row, svg, shown.screenshot()?))
    })
    .await??;
    ensure!(row["route"] == json!(hosts_shown), "the page shows {row}");
    ensure!(row["hops"] == json!(info.hops.to_string()), "the page shows {row}, the home {info:?}");
    ensure!(row["location"] == json!("home"), "{row}");
    let mut drawn: Vec<String> = serde_json::from_value(svg["hosts"].clone())?;
    drawn.sort();
    ensure!(drawn == ["a", "constructor", "home"] && svg["routes"] == json!(1), "the map shows {svg}");

    ensure!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "not a screenshot: {} bytes", png.len());
    let file = artifacts()?.join("status-page.png");
    std::fs::write(&file, &png)?;
    println!("screenshot: {}", file.display());
    drop(browser);
    for r in [a, b, home_run] {
        r.shutdown().await;
    }
    Ok(())
}
