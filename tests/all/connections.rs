//! Hostile connections against a real host on loopback: peers that trickle bytes, hold
//! connections open, declare huge frames and send malformed ones. Each is refused or closed
//! with a clear error, within bounded memory, while other clients are served.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use roam_host::client::Client;
use roam_host::config::HostConfig;
use roam_host::handshake::Welcome;
use roam_host::host::Host;
use roam_host::protocol::{self, ErrorKind, FRAME_TIMEOUT, ModuleRef, RemoteError, Request, Response};
use roam_host::server::RunningHost;
use roam_host::transport::ClientStream;
use roam_keys::Kind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A query that answers CBOR `true` at once.
const QUICK: &str = r#"(module
  (import "roam" "finish" (func $finish (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\f5")
  (func (export "roam_query") (call $finish (i32.const 0) (i32.const 0) (i32.const 1))))"#;

/// A loopback address other than 127.0.0.1, a new one for each call (in turn): the connections
/// of these tests come from many clients, so that none is over its share of the host.
fn another_source() -> std::net::Ipv4Addr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250;
    std::net::Ipv4Addr::new(127, 0, 1, 2 + n as u8)
}

/// Opens a connection by hand (TLS, then a hello) from [`another_source`]; returns the stream
/// and the host's answer.
async fn open(addr: &str) -> Result<(ClientStream, Welcome)> {
    roam_tests::opened_from(addr, Some(another_source())).await
}

/// A connection by hand, past the handshake.
async fn accepted(addr: &str) -> Result<ClientStream> {
    match open(addr).await? {
        (stream, Welcome::Accepted { .. }) => Ok(stream),
        (_, Welcome::Refused(e)) => bail!("the host refused the connection: {e}"),
    }
}

/// The first bytes a TLS client sends (its ClientHello), to send by hand.
fn client_hello() -> Result<Vec<u8>> {
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut client = rustls::ClientConnection::new(roam_host::transport::anonymous()?, name)?;
    let mut hello = Vec::new();
    client.write_tls(&mut hello)?;
    Ok(hello)
}

/// Sends `bytes` one at a time, `gap` apart, until the host answers with a message `T` (or the
/// bytes run out); returns the answer and how long after the first byte it came.
async fn trickle<T: for<'de> serde::Deserialize<'de>>(
    stream: impl AsyncRead + AsyncWrite + Send + 'static,
    bytes: Vec<u8>,
    gap: Duration,
) -> Result<(T, Duration)> {
    let (mut read, write) = tokio::io::split(stream);
    let started = Instant::now();
    tokio::select! {
        () = dribble(write, bytes, gap) => unreachable!("pending never ends"),
        answer = protocol::read_message::<_, T>(&mut read, 64 << 10, FRAME_TIMEOUT) => {
            let answer = answer.context("the host did not say why it closed the slow connection")?;
            let after = started.elapsed();
            // Then the host closes the connection: an end of stream, or a reset if bytes still
            // trickling in reached the host after it stopped reading.
            let next = protocol::read_frame(&mut read, 64 << 10, FRAME_TIMEOUT).await;
            let closed = match &next {
                Err(protocol::FrameError::Closed) => true,
                Err(protocol::FrameError::Io(e)) => e.kind() == std::io::ErrorKind::ConnectionReset,
                _ => false,
            };
            anyhow::ensure!(closed, "the slow connection stayed open: {next:?}");
            Ok((answer, after))
        }
    }
}

/// Sends `bytes` one at a time, `gap` apart, and returns how long after the first byte the host
/// closed the connection (before TLS is up, it can only close it).
async fn trickle_until_closed(stream: TcpStream, bytes: Vec<u8>, gap: Duration) -> Result<Duration> {
    let (mut read, write) = stream.into_split();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::select! {
        () = dribble(write, bytes, gap) => unreachable!("pending never ends"),
        _ = read.read(&mut buf) => Ok(started.elapsed()),
    }
}

/// Writes `bytes` one at a time, `gap` apart, then holds the connection open: only the host may
/// end it. Never returns.
async fn dribble(mut write: impl AsyncWrite + Unpin, bytes: Vec<u8>, gap: Duration) {
    for b in bytes {
        if write.write_all(&[b]).await.is_err() {
            break;
        }
        tokio::time::sleep(gap).await;
    }
    std::future::pending::<()>().await;
}

fn slow_error(e: &RemoteError, deadline: Duration) -> Result<()> {
    anyhow::ensure!(e.kind == ErrorKind::Protocol, "{e:?}");
    anyhow::ensure!(e.message.contains("did not arrive whole"), "{e:?}");
    anyhow::ensure!(e.message.contains(&format!("{deadline:?}")), "{e:?} does not name the deadline");
    Ok(())
}

#[tokio::test]
async fn slow_connections_are_closed_at_the_frame_deadline_while_others_are_served() -> Result<()> {
    const SLOW: usize = 50;
    const CAP: usize = SLOW + 10;
    let deadline = Duration::from_secs(3);
    let fixture = roam_tests::Fixture::new()?;
    let mut config = HostConfig::new(fixture.trust_dir(), fixture.path().join("data"));
    config.limits.frame_timeout_ms = deadline.as_millis() as u64;
    config.limits.max_connections = CAP;
    config.limits.reserved_connections = 0;
    let running = RunningHost::start(Host::open(&config)?, "127.0.0.1:0".parse()?).await?;
    let addr = running.addr().to_string();
    let quick = fixture.sign(&wat::parse_str(QUICK)?, "alice", Kind::Query, "quick", "1.0.0", &[])?;

    // Half the slow peers trickle a request after the handshake, half trickle the TLS
    // handshake itself; each sends one byte every 100 ms, which would take minutes to finish.
    let mut request = 1000u32.to_be_bytes().to_vec();
    request.extend([0x81; 1000]);
    let hello = client_hello()?;
    let gap = Duration::from_millis(100);
    let mut slow = tokio::task::JoinSet::new();
    for i in 0..SLOW {
        let (request, hello) = (request.clone(), hello.clone());
        if i % 2 == 0 {
            let stream = accepted(&addr).await?;
            slow.spawn(async move {
                match trickle::<Response>(stream, request, gap).await? {
                    (Response::Error(e), after) => slow_error(&e, deadline).map(|()| after),
                    (other, _) => bail!("a slow request was answered with {other:?}"),
                }
            });
        } else {
            let stream = roam_tests::connect_from(&addr, Some(another_source())).await?;
            slow.spawn(async move { trickle_until_closed(stream, hello, gap).await });
        }
    }

    // Meanwhile other clients are served.
    for _ in 0..5 {
        assert_eq!(Client::connect(&addr).await?.eval(&quick, vec![0xa0]).await?, vec![0xf5]);
    }
    // And the cap holds: with the slow peers holding their slots, at most the rest are admitted.
    let mut extra = Vec::new();
    for _ in 0..20 {
        extra.push(open(&addr).await?);
    }
    let admitted = extra.iter().filter(|(_, w)| matches!(w, Welcome::Accepted { .. })).count();
    let busy = extra
        .iter()
        .filter(|(_, w)| matches!(w, Welcome::Refused(e) if e.kind == ErrorKind::Busy && e.message.contains(&format!("limit of {CAP} connections"))))
        .count();
    assert!(admitted <= CAP - SLOW, "{admitted} more connections were admitted past the {SLOW} slow ones, cap {CAP}");
    assert_eq!(admitted + busy, extra.len(), "a connection over the cap was not told the host is busy");
    drop(extra);

    while let Some(closed) = slow.join_next().await {
        let after = closed??;
        assert!(after < deadline + Duration::from_secs(5), "a slow connection was closed only after {after:?}");
    }
    // Their slots are free again.
    assert_eq!(Client::connect(&addr).await?.eval(&quick, vec![0xa0]).await?, vec![0xf5]);
    running.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_connection_declaring_a_huge_frame_costs_memory_for_the_bytes_it_sent() -> Result<()> {
    const PEERS: u64 = 200;
    let fixture = roam_tests::Fixture::new()?;
    // Room for every announced frame in the budget of bytes in flight, and slots for every
    // peer: what is measured is what an announcement costs before its bytes come.
    let config = fixture.write(
        "host.toml",
        format!(
            "trust = {:?}\n[limits]\ninflight_mib = 8192\nreserved_connections = 0\n",
            fixture.trust_dir().display().to_string()
        ),
    )?;
    let host = fixture.host(roam_tests::args!["--config", config])?;
    let addr = host.addr.to_string();
    let cap = protocol::DEFAULT_MAX_FRAME;
    // Warm up: the runtime's threads and buffers exist before the baseline.
    let mut peers = vec![accepted(&addr).await?];
    let (rss, size) = (host.memory("VmRSS")?, host.memory("VmSize")?);
    for _ in 1..PEERS {
        peers.push(accepted(&addr).await?);
    }
    for peer in &mut peers {
        // A frame of exactly the cap is announced; 16 bytes of it arrive.
        peer.write_all(&(cap as u32).to_be_bytes()).await?;
        peer.write_all(&[0x81; 16]).await?;
    }
    // The memory below says what the announced frames cost only once the host has read every
    // announcement: its side of each connection then holds nothing unread.
    let ours = peers.iter().map(|p| p.get_ref().0.local_addr()).collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let theirs = roam_tests::tcp_sockets(host.addr)?;
        let pending = ours
            .iter()
            .filter(|&&peer| !theirs.iter().any(|s| s.remote == peer && s.established && s.unread == 0))
            .count();
        if pending == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the host has not read what {pending} of the {PEERS} peers sent: {theirs:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grew_rss = host.memory("VmRSS")?.saturating_sub(rss);
    let grew_size = host.memory("VmSize")?.saturating_sub(size);
    // Measured while the host still held every connection in the middle of its frame (it ends
    // one 30 s after its first byte).
    let theirs = roam_tests::tcp_sockets(host.addr)?;
    let open = ours.iter().filter(|&&peer| theirs.iter().any(|s| s.remote == peer && s.established)).count();
    assert_eq!(open, PEERS as usize, "the host closed connections before its memory was measured");
    eprintln!(
        "{PEERS} connections with a {} MiB frame announced: RSS +{} KiB ({} KiB each), address space +{} MiB",
        cap >> 20,
        grew_rss >> 10,
        (grew_rss / PEERS) >> 10,
        grew_size >> 20
    );
    // The declared 200 × 32 MiB is neither resident nor reserved.
    assert!(grew_rss < cap as u64, "resident memory grew by {} MiB", grew_rss >> 20);
    assert!(grew_size < 8 * cap as u64, "address space grew by {} MiB", grew_size >> 20);
    drop(peers);
    host.stop()
}

#[tokio::test]
async fn frames_at_the_cap_are_read_and_over_it_are_refused_unread() -> Result<()> {
    let fixture = roam_tests::Fixture::new()?;
    let config = HostConfig::new(fixture.trust_dir(), fixture.path().join("data"));
    let cap = config.limits.frame_kib << 10;
    let running = RunningHost::start(Host::open(&config)?, "127.0.0.1:0".parse()?).await?;
    let addr = running.addr().to_string();

    // An evaluation whose input fills the frame to exactly the cap is read and answered.
    let hash = roam_keys::hash_module(b"not held");
    let frame = |input: usize| {
        let mut buf = Vec::new();
        ciborium::into_writer(&Request::Eval { module: ModuleRef::Hash(hash), input: vec![0; input] }, &mut buf)
            .map(|()| buf)
    };
    let overhead = frame(cap / 2)?.len() - cap / 2;
    let body = frame(cap - overhead)?;
    assert_eq!(body.len(), cap);
    let mut stream = accepted(&addr).await?;
    stream.write_all(&(cap as u32).to_be_bytes()).await?;
    stream.write_all(&body).await?;
    let answer: Response = protocol::read_message(&mut stream, 64 << 10, FRAME_TIMEOUT).await?;
    assert!(matches!(answer, Response::NeedModule(h) if h == hash), "{answer:?}");

    // One byte more, or u32::MAX, is refused from the length alone, without its body.
    for declared in [cap as u32 + 1, u32::MAX] {
        let mut stream = accepted(&addr).await?;
        stream.write_all(&declared.to_be_bytes()).await?;
        match protocol::read_message(&mut stream, 64 << 10, FRAME_TIMEOUT).await? {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::Protocol, "{e:?}");
                assert!(
                    e.message.contains(&format!("frame of {declared} bytes is over the limit of {cap} bytes")),
                    "{e:?}"
                );
            }
            other => bail!("a frame of {declared} bytes was answered with {other:?}"),
        }
    }
    running.shutdown().await;
    Ok(())
}

/// One source (127.0.0.2) opens 300 connections, half silent before TLS, half idle after a
/// completed handshake: it holds at most its share of the host (`connections_per_source`), the
/// rest are closed at once, and a normal evaluation from another source still answers at once.
/// Anonymous clients never take the slots reserved for identified ones, and a connection idle
/// after its handshake is closed at the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_holding_many_connections_leaves_the_host_to_others() -> Result<()> {
    let fixture = roam_tests::Fixture::new()?;
    let mut config = HostConfig::new(fixture.trust_dir(), fixture.path().join("data"));
    config.limits.idle_s = 2;
    let share = config.limits.connections_per_source;
    let running = RunningHost::start(Host::open(&config)?, "127.0.0.1:0".parse()?).await?;
    let addr = running.addr().to_string();
    let quick = fixture.sign(&wat::parse_str(QUICK)?, "alice", Kind::Query, "quick", "1.0.0", &[])?;
    let flooder = Some(std::net::Ipv4Addr::new(127, 0, 0, 2));

    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(roam_tests::connect_from(&addr, flooder).await?);
    }
    let mut idle = Vec::new();
    for _ in 0..150 {
        if let Ok((stream, Welcome::Accepted { .. })) = roam_tests::opened_from(&addr, flooder).await {
            idle.push(stream);
        }
    }
    assert!(
        idle.len() <= share,
        "one source held {} connections past their handshake; its share is {share}",
        idle.len()
    );

    let started = Instant::now();
    let answer = Client::connect(&addr).await?.eval(&quick, vec![0xa0]).await?;
    let took = started.elapsed();
    assert_eq!(answer, vec![0xf5]);
    eprintln!("an evaluation beside 300 connections of one source took {took:?}");
    assert!(took < Duration::from_secs(1), "an evaluation beside one source's 300 connections took {took:?}");

    // A connection idle after its handshake is closed at the idle timeout.
    let mut idler = open(&addr).await?.0;
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(30), idler.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "an idle connection was not closed: {closed:?}");
    drop((silent, idle));
    running.shutdown().await;
    Ok(())
}

/// With 10 connections, 4 kept for peers and the clients the policy names: the seventh
/// anonymous connection is told the slots for others are taken, so is one with a throwaway key,
/// and a named client still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_never_take_the_slots_kept_for_identified_ones() -> Result<()> {
    let fixture = roam_tests::Fixture::new()?;
    let key = std::sync::Arc::new(roam_keys::SecretKey::generate()?);
    let policy = format!("[clients]\nknown = \"{}\"\n{}", key.public(), roam_tests::OPEN_ACCESS);
    fixture.write("trust/access.toml", policy)?;
    let mut config = HostConfig::new(fixture.trust_dir(), fixture.path().join("data"));
    config.limits.max_connections = 10;
    config.limits.reserved_connections = 4;
    let running = RunningHost::start(Host::open(&config)?, "127.0.0.1:0".parse()?).await?;
    let addr = running.addr().to_string();
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(accepted(&addr).await?);
    }
    match open(&addr).await? {
        (_, Welcome::Refused(e)) if e.kind == ErrorKind::Busy && e.message.contains("does not know") => {}
        (_, other) => bail!("a seventh anonymous connection was {other:?}"),
    }
    // A key the policy does not name is no better than none.
    let throwaway = std::sync::Arc::new(roam_keys::SecretKey::generate()?);
    let tls = roam_host::transport::client_config(Some(throwaway))?;
    match Client::connect_target(&addr, tls).await {
        Err(roam_host::client::ClientError::Refused(e)) if e.kind == ErrorKind::Busy => {}
        other => bail!("a throwaway key took a reserved slot: {other:?}"),
    }
    let tls = roam_host::transport::client_config(Some(key))?;
    let mut identified = Client::connect_target(&addr, tls).await.context("an identified client was refused")?;
    assert!(matches!(identified.request(&Request::Ping).await?, Response::Pong));
    drop(held);
    running.shutdown().await;
    Ok(())
}

/// 32 connections each send a 32 MiB frame at once; with a budget of 64 MiB of frames in
/// flight, the host reads them a few at a time, and its peak resident memory grows by less than
/// the budget plus 100 MB (it grew by about a gibibyte without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_large_frames_stay_within_the_budget_of_bytes_in_flight() -> Result<()> {
    const FRAMES: usize = 32;
    const SIZE: usize = 32 << 20;
    const BUDGET_MIB: u64 = 64;
    let fixture = roam_tests::Fixture::new()?;
    let config = fixture.write(
        "host.toml",
        format!("trust = {:?}\n[limits]\ninflight_mib = {BUDGET_MIB}\n", fixture.trust_dir().display().to_string()),
    )?;
    let host = fixture.host(roam_tests::args!["--config", config])?;
    let addr = host.addr.to_string();
    // Warm up, then the baseline: the peak so far.
    drop(accepted(&addr).await?);
    let before = host.memory("VmHWM")?;
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..FRAMES {
        let mut stream = accepted(&addr).await?;
        senders.spawn(async move {
            let mut frame = (SIZE as u32).to_be_bytes().to_vec();
            frame.resize(4 + SIZE, 0x81);
            stream.write_all(&frame).await?;
            stream.flush().await?;
            // Each is answered (malformed, or busy) and closed once read or given up on.
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut rest)).await;
            anyhow::Ok(())
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent??;
    }
    let grew = host.memory("VmHWM")?.saturating_sub(before);
    eprintln!("{FRAMES} frames of {} MiB at once: peak RSS +{} MiB (budget {BUDGET_MIB} MiB)", SIZE >> 20, grew >> 20);
    assert!(grew < (BUDGET_MIB << 20) + 100_000_000, "peak resident memory grew by {} MiB", grew >> 20);
    host.stop()
}
