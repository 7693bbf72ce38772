//! Trust stores loaded from directories, and policies.

use std::fs;

use roam_keys::{Kind, Policy, PublicKey, TrustError, TrustStore, write_keypair};

use crate::{TestResult, alice, mallory};

fn write_pub(dir: &std::path::Path, file: &str, key: PublicKey) -> std::io::Result<()> {
    fs::write(dir.join(file), format!("roam-public-key ed25519 {key}\n"))
}

#[test]
fn loads_pub_files_and_policy() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (_, _, carol) = write_keypair(dir.path(), "carol")?; // its .key file must be ignored
    write_pub(dir.path(), "alice.pub", alice().public())?;
    write_pub(dir.path(), "mallory.pub", mallory().public())?;
    fs::write(dir.path().join("README.txt"), "not a key")?;
    fs::write(dir.path().join(".alice.pub.swp"), "editor junk")?;
    fs::write(dir.path().join(".hidden.pub"), "editor junk")?;
    fs::write(
        dir.path().join("policy.toml"),
        format!(
            r#"
revoked = ["{}"]

[keys.alice]
capabilities = ["table:sales", "log:*"]
kinds = ["query", "code"]

[keys.carol]
capabilities = ["*"]
"#,
            mallory().public()
        ),
    )?;
    let trust = TrustStore::load(dir.path())?;

    let mut names: Vec<&str> = trust.keys().map(|k| k.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["alice", "carol", "mallory"]);
    let a = alice().public();
    assert_eq!(trust.get(&a).map(|k| (k.name.as_str(), k.key)), Some(("alice", a)));

    assert!(trust.allows(&a, "table:sales"));
    assert!(trust.allows(&a, "log:audit"));
    assert!(trust.allows(&a, "log:"));
    assert!(!trust.allows(&a, "table:salaries"));
    assert!(!trust.allows(&a, "table:sales2"));
    assert!(trust.allows_kind(&a, Kind::Query));
    assert!(!trust.allows_kind(&a, Kind::Agent));

    assert!(trust.allows(&carol, "anything:at-all"));
    assert!(trust.allows_kind(&carol, Kind::Agent), "kinds default to all");

    let m = mallory().public();
    assert!(trust.is_revoked(&m));
    assert!(trust.get(&m).is_some(), "revoked keys stay listed");
    assert!(!trust.allows(&m, "log:audit"));
    assert!(!trust.allows_kind(&m, Kind::Query));

    let stranger = PublicKey::from_bytes([1; 32]);
    assert!(trust.get(&stranger).is_none());
    assert!(!trust.allows(&stranger, "log:audit"));
    assert!(!trust.allows_kind(&stranger, Kind::Query));
    Ok(())
}

#[test]
fn without_policy_trusted_keys_may_do_anything() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_pub(dir.path(), "alice.pub", alice().public())?;
    let trust = TrustStore::load(dir.path())?;
    assert!(trust.policy().is_none());
    assert!(trust.allows(&alice().public(), "table:anything"));
    assert!(trust.allows_kind(&alice().public(), Kind::Agent));
    assert!(!trust.is_revoked(&alice().public()));
    Ok(())
}

#[test]
fn with_policy_unlisted_keys_get_no_capabilities_but_all_kinds() {
    let trust = TrustStore::empty().with_key("alice", alice().public()).with_policy(Policy::default());
    assert!(!trust.allows(&alice().public(), "log:audit"));
    assert!(Kind::ALL.iter().all(|&k| trust.allows_kind(&alice().public(), k)));
}

#[test]
fn with_key_replaces_by_name_and_by_key() {
    let trust = TrustStore::empty()
        .with_key("alice", mallory().public())
        .with_key("alice", alice().public())
        .with_key("alias", alice().public());
    let listed: Vec<_> = trust.keys().map(|k| (k.name.clone(), k.key)).collect();
    assert_eq!(listed, [("alias".to_owned(), alice().public())]);
}

#[test]
fn missing_directory_is_named() {
    let err = TrustStore::load(std::path::Path::new("/nonexistent/roam-trust")).unwrap_err();
    assert!(matches!(err, TrustError::MissingDir { .. }));
    assert!(err.to_string().contains("/nonexistent/roam-trust"), "{err}");
}

#[test]
fn bad_pub_file_is_named() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_pub(dir.path(), "alice.pub", alice().public())?;
    fs::write(dir.path().join("broken.pub"), "roam-public-key ed25519 xyz\n")?;
    let err = TrustStore::load(dir.path()).unwrap_err();
    assert!(matches!(err, TrustError::Key(_)), "{err}");
    assert!(err.to_string().contains("broken.pub"), "{err}");
    Ok(())
}

#[test]
fn the_same_key_under_two_names_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_pub(dir.path(), "alice.pub", alice().public())?;
    write_pub(dir.path(), "alice-copy.pub", alice().public())?;
    let err = TrustStore::load(dir.path()).unwrap_err();
    assert!(matches!(err, TrustError::DuplicateKey { .. }), "{err}");
    Ok(())
}

#[test]
fn unknown_policy_field_is_refused_with_file_and_line() -> TestResult {
    let dir = tempfile::tempdir()?;
    write_pub(dir.path(), "alice.pub", alice().public())?;
    fs::write(dir.path().join("policy.toml"), "[keys.alice]\ncapabilities = [\"log:*\"]\ncapabilites = [\"*\"]\n")?;
    let err = TrustStore::load(dir.path()).unwrap_err();
    let TrustError::BadPolicy { ref path, line, ref message } = err else {
        panic!("expected BadPolicy, got {err}");
    };
    assert_eq!(path, &dir.path().join("policy.toml"));
    assert_eq!(line, 3, "{message}");
    assert!(message.contains("capabilites"), "{message}");
    assert!(err.to_string().contains("policy.toml:3"), "{err}");

    assert!(matches!(Policy::parse("sandbox = true\n"), Err(TrustError::BadPolicy { line: 1, .. })));
    Ok(())
}

#[test]
fn bad_policy_values_are_refused_with_their_line() {
    let cases = [
        ("revoked = [\n  \"abcd\",\n]\n", 2),
        ("\n[keys.alice]\nkinds = [\"query\", \"daemon\"]\n", 3),
        ("[keys.alice]\n\ncapabilities = [\"*:sales\"]\n", 3),
        ("[keys.alice]\ncapabilities = [\"\"]\n", 2),
        ("[keys.alice]\ncapabilities = [\"log audit\"]\n", 2),
        ("revoked = \"not a list\"\n", 1),
        ("[keys.alice\n", 1),
    ];
    for (text, want) in cases {
        match Policy::parse(text) {
            Err(TrustError::BadPolicy { line, message, .. }) => {
                assert_eq!(line, want, "{text:?}: {message}");
            }
            other => panic!("{text:?} gave {other:?}"),
        }
    }
}

#[test]
fn policy_parses_all_fields() -> TestResult {
    let policy = Policy::parse(&format!(
        "revoked = [\"{}\"]\n[keys.alice]\ncapabilities = [\"log:*\"]\nkinds = [\"agent\"]\n",
        mallory().public().to_hex().to_uppercase()
    ))?;
    assert!(policy.revoked.contains(&mallory().public()));
    let alice = &policy.keys["alice"];
    assert_eq!(alice.capabilities, ["log:*"]);
    assert_eq!(alice.kinds.as_deref(), Some(&[Kind::Agent][..]));
    Ok(())
}
