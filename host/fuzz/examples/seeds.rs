//! Writes the seed corpora under `corpus/<target>/`: a few small, valid inputs per target, made
//! with the same fixtures the targets use. The output is deterministic (fixed keys and times,
//! deterministic signatures), so rerunning it after a wire-format change shows in `git diff`.
//!
//! `cargo run --manifest-path host/fuzz/Cargo.toml --example seeds` (from the repository root).

use std::path::Path;

use roam_abi::{Action, Bound, Value};
use roam_fuzz::{NOW, agent_layout, cbor, module_signer, peer, revoked_signer, stranger};
use roam_host::handshake::{self, Hello, Identity, Welcome};
use roam_host::protocol::wire::{
    AgentInfo, AgentLimits, AgentRecord, Anchor, Call, CallOp, Ending, Envelope, Event, Recall, Report, Signed, Visit,
    domain,
};
use roam_host::protocol::{self, ErrorKind, ModuleInfo, ModuleRef, RemoteError, Request, Response};
use roam_host::resources::{Attachment, ResourceType, TableCopy};
use roam_host::snapshot::{GlobalValue, PAGE, Snapshot};
use roam_keys::{Kind, ModuleHash, SecretKey, SignRequest, sign_module};

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, seeds) in
        [("frame", frames()?), ("message", messages()?), ("snapshot", snapshots()), ("signature", modules()?)]
    {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes)?;
        }
    }
    Ok(())
}

fn hash(byte: u8) -> ModuleHash {
    ModuleHash::from_bytes([byte; 32])
}

fn record() -> AgentRecord {
    AgentRecord {
        id: "0123456789abcdef0123456789abcdef".into(),
        code: hash(1),
        label: "survey@1.0.0".into(),
        home: "127.0.0.1:7700".into(),
        home_key: peer().public(),
        launched_at: NOW,
        limits: AgentLimits { max_hops: 8, max_snapshot_bytes: 1 << 20, lifetime_secs: 3600 },
        anchors: vec![Anchor {
            name: "stock".into(),
            kind: ResourceType::Table,
            attachment: Attachment::Unattached,
            owner: "127.0.0.1:7701".into(),
            copy: Some(TableCopy {
                columns: vec!["item".into(), "qty".into()],
                rows: vec![vec![Value::Text("bolt".into()), Value::Integer(3)], vec![Value::Null, Value::Real(0.5)]],
            }),
        }],
    }
}

fn envelope() -> Envelope {
    Envelope {
        record: record(),
        hop: 1,
        snapshot_digest: hash(2),
        sender_addr: "127.0.0.1:7700".into(),
        destination: stranger().public(),
        sent_at: NOW,
        nonce: 42,
        ending: Some(Ending::Finished(vec![0x18, 0x2a])),
        unreachable: vec!["127.0.0.1:9".into()],
    }
}

fn report() -> Report {
    let bindings = vec![Bound { name: "stock".into(), action: Action::Rb, error: None }];
    Report {
        agent: record().id,
        hop: 1,
        event: Event::Arrived { host: "d1".into(), address: "127.0.0.1:7701".into(), bindings },
    }
}

fn recall() -> Recall {
    Recall { agent: record().id, at: NOW }
}

fn call() -> Call {
    let op = CallOp::Query {
        sql: "SELECT qty FROM stock WHERE item = ?1".into(),
        params: vec![Value::Text("bolt".into()), Value::Blob(vec![1, 2])],
    };
    Call { agent: record().id, resource: "stock".into(), op, at: NOW }
}

fn signed() -> Result<[Signed; 4], Box<dyn std::error::Error>> {
    let key = peer();
    Ok([
        Signed::sign(domain::ENVELOPE, &envelope(), &key)?,
        Signed::sign(domain::REPORT, &report(), &key)?,
        Signed::sign(domain::RECALL, &recall(), &key)?,
        Signed::sign(domain::CALL, &call(), &key)?,
    ])
}

fn hello() -> Hello {
    Hello {
        protocol: protocol::PROTOCOL.into(),
        versions: vec![protocol::VERSION],
        client: "seed".into(),
        nonce: vec![7; handshake::NONCE_LEN],
    }
}

fn requests() -> Result<Vec<(&'static str, Request)>, Box<dyn std::error::Error>> {
    let [transfer, report, recall, call] = signed()?;
    Ok(vec![
        ("eval-hash", Request::Eval { module: ModuleRef::Hash(hash(3)), input: vec![0xa1, 0x61, 0x6e, 0x02] }),
        ("eval-bytes", Request::Eval { module: ModuleRef::Bytes(b"\0asm\x01\0\0\0".to_vec()), input: vec![0xf6] }),
        ("publish", Request::Publish { module: b"\0asm\x01\0\0\0".to_vec() }),
        ("list", Request::List),
        (
            "resolve",
            Request::Resolve { name: "validator".into(), version: Some(semver::Version::parse("1.2.3-rc.1+b5")?) },
        ),
        ("fetch", Request::Fetch { hash: hash(4), offset: 65536, max: 1 << 20 }),
        ("launch", Request::Launch { module: b"\0asm\x01\0\0\0".to_vec(), input: vec![0x80] }),
        ("transfer", Request::Transfer { envelope: transfer, snapshot: cbor(&snapshot_seed()) }),
        ("report", Request::Report(report)),
        ("agents", Request::Agents { id: Some(record().id) }),
        ("recall", Request::Recall { id: record().id }),
        ("recall-agent", Request::RecallAgent(recall)),
        ("call", Request::Call(call)),
        ("ping", Request::Ping),
    ])
}

fn responses() -> Vec<(&'static str, Response)> {
    let info = ModuleInfo {
        hash: hash(5),
        kind: Kind::Code,
        name: "validator".into(),
        version: semver::Version::new(1, 0, 0),
        signer: module_signer().public(),
        size: 1234,
        downloads: 7,
    };
    let agent = AgentInfo {
        id: record().id,
        label: "survey@1.0.0".into(),
        state: "finished".into(),
        location: "127.0.0.1:7700".into(),
        hops: 2,
        result: vec![0x18, 0x2a],
        detail: None,
        route: vec![Visit { hop: 1, host: "d1".into(), address: "127.0.0.1:7701".into(), bindings: vec![] }],
        home: true,
    };
    vec![
        ("response-result", Response::Result(vec![0x82, 0x01, 0xfb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0])),
        ("response-need-module", Response::NeedModule(hash(6))),
        ("response-error", Response::Error(RemoteError::new(ErrorKind::OutOfTime, "the module ran out of time"))),
        ("response-modules", Response::Modules(vec![info.clone()])),
        ("response-chunk", Response::Chunk { total: 100, bytes: vec![0; 16] }),
        ("response-agents", Response::Agents(vec![agent])),
        ("response-rows", Response::Rows(vec![serde_bytes::ByteBuf::from(cbor(&vec![vec![Value::Integer(1)]]))])),
        ("response-published", Response::Published(info)),
    ]
}

fn welcome() -> Welcome {
    let host = peer();
    let proof = host.sign(&handshake::handshake_message(&hello().nonce, &host.public())).to_vec();
    Welcome::Accepted {
        version: protocol::VERSION,
        host: "d1".into(),
        host_key: host.public(),
        proof,
        challenge: vec![9; handshake::NONCE_LEN],
    }
}

/// A host's answer to the welcome's challenge, proving its key.
fn identity() -> Identity {
    Identity::prove(&peer(), &[9; handshake::NONCE_LEN], &peer().public())
}

fn messages() -> Result<Seeds, Box<dyn std::error::Error>> {
    let mut seeds: Seeds = vec![
        ("hello", cbor(&hello())),
        ("welcome", cbor(&welcome())),
        ("identity-key", cbor(&identity())),
        ("identity-anonymous", cbor(&Identity::Anonymous)),
    ];
    seeds.extend(requests()?.into_iter().map(|(name, r)| (name, cbor(&r))));
    seeds.extend(responses().into_iter().map(|(name, r)| (name, cbor(&r))));
    let [signed_envelope, signed_report, signed_recall, signed_call] = signed()?;
    seeds.extend([
        ("signed-envelope", cbor(&signed_envelope)),
        ("signed-report", cbor(&signed_report)),
        ("signed-recall", cbor(&signed_recall)),
        ("signed-call", cbor(&signed_call)),
        ("envelope", cbor(&envelope())),
        ("report-body", cbor(&report())),
        ("recall-body", cbor(&recall())),
        ("call-body", cbor(&call())),
    ]);
    Ok(seeds)
}

/// Whole connections: a hello frame, an identity frame, then request frames.
fn frames() -> Result<Seeds, Box<dyn std::error::Error>> {
    let runtime = roam_fuzz::runtime();
    let frame = |messages: Vec<Request>| -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        runtime.block_on(async {
            let mut out = Vec::new();
            protocol::write_message(&mut out, &hello()).await?;
            protocol::write_message(&mut out, &identity()).await?;
            for m in &messages {
                protocol::write_message(&mut out, m).await?;
            }
            Ok(out)
        })
    };
    let requests: Vec<Request> = requests()?.into_iter().map(|(_, r)| r).collect();
    Ok(vec![
        ("hello-ping", frame(vec![Request::Ping])?),
        ("hello-eval-list", frame(vec![requests[0].clone(), Request::List])?),
        ("hello-transfer", frame(vec![requests[7].clone()])?),
        ("hello-call-report", frame(vec![requests[12].clone(), requests[8].clone()])?),
    ])
}

fn snapshot_seed() -> Snapshot {
    let (slots, initial_bytes) = agent_layout();
    let initial = vec![0u8; initial_bytes as usize];
    let mut memory = initial.clone();
    memory.resize(initial.len() * 2, 0);
    memory[PAGE + 3] = 1;
    memory[2 * PAGE] = 2;
    memory[initial.len() + 5 * PAGE] = 3;
    let globals = slots
        .slots
        .iter()
        .map(|(_, kind)| match kind {
            roam_host::snapshot::GlobalKind::I32 => GlobalValue::I32(1024),
            roam_host::snapshot::GlobalKind::I64 => GlobalValue::I64(-3),
            roam_host::snapshot::GlobalKind::F32 => GlobalValue::F32(0x3f80_0000),
            roam_host::snapshot::GlobalKind::F64 => GlobalValue::F64(0x3ff8_0000_0000_0000),
        })
        .collect();
    Snapshot::capture(&memory, &initial, globals)
}

fn snapshots() -> Seeds {
    let grown = snapshot_seed();
    let unchanged = Snapshot { memory_bytes: grown.memory_bytes / 2, chunks: vec![], globals: grown.globals.clone() };
    vec![("grown", cbor(&grown)), ("unchanged", cbor(&unchanged))]
}

/// Signed modules: valid, and refused at each of several checks.
fn modules() -> Result<Seeds, Box<dyn std::error::Error>> {
    let module = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "roam_query") (result i32) (i32.const 0))
             (@custom "note" "seed"))"#,
    )?;
    let request = |kind, capabilities: &[&str], expires| SignRequest {
        kind,
        name: "seed".into(),
        version: semver::Version::new(1, 0, 0),
        issued_at: NOW - 100,
        not_before: NOW - 100,
        expires,
        capabilities: capabilities.iter().map(|c| (*c).to_owned()).collect(),
    };
    let sign = |key: &SecretKey, req| sign_module(&module, key, req);
    let signer = module_signer();
    Ok(vec![
        ("query", sign(&signer, request(Kind::Query, &["table:sales", "log:audit"], NOW + 3600))?),
        ("code", sign(&signer, request(Kind::Code, &[], NOW + 3600))?),
        ("agent-kind-denied", sign(&signer, request(Kind::Agent, &[], NOW + 3600))?),
        ("capability-denied", sign(&signer, request(Kind::Query, &["table:secrets"], NOW + 3600))?),
        ("expired", sign(&signer, request(Kind::Query, &[], NOW))?),
        ("revoked", sign(&revoked_signer(), request(Kind::Query, &[], NOW + 3600))?),
        ("untrusted", sign(&stranger(), request(Kind::Query, &[], NOW + 3600))?),
        ("unsigned", module.clone()),
    ])
}
