//! Key pairs, key files and their formats.

use std::fs;

use roam_keys::{KeyError, PublicKey, SecretKey, write_keypair};

use crate::{SEED, TestResult, alice};

/// RFC 8032, section 7.1, TEST 1.
const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
const RFC8032_SIG_EMPTY: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065\
                                 224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

#[test]
fn rfc8032_test_vector_1() -> TestResult {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(RFC8032_SEED, &mut seed)?;
    let key = SecretKey::from_seed(seed);
    assert_eq!(key.public().to_hex(), RFC8032_PUBLIC);
    assert_eq!(key.public(), PublicKey::from_hex(RFC8032_PUBLIC)?);

    let sig = key.sign(b"");
    assert_eq!(hex::encode(sig), RFC8032_SIG_EMPTY);
    assert!(key.public().verify_strict(b"", &sig));
    assert!(!key.public().verify_strict(b"x", &sig));
    Ok(())
}

#[test]
fn verify_strict_refuses_invalid_and_weak_keys() {
    let sig = alice().sign(b"msg");
    // The identity point is a small-order (weak) key; verify_strict must refuse it.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(!PublicKey::from_bytes(identity).verify_strict(b"msg", &sig));
    // Not a point on the curve at all.
    let mut off_curve = [0u8; 32];
    off_curve[0] = 2;
    assert!(!PublicKey::from_bytes(off_curve).verify_strict(b"msg", &sig));
    assert!(!PublicKey::from_bytes([0xff; 32]).verify_strict(b"msg", &sig));
}

#[test]
fn secret_key_debug_hides_the_secret() {
    let shown = format!("{:?}", alice());
    assert!(!shown.contains(&hex::encode(SEED)));
    assert!(shown.contains(&alice().public().to_hex()));
}

#[test]
fn generated_keys_differ_and_sign() -> TestResult {
    let (a, b) = (SecretKey::generate()?, SecretKey::generate()?);
    assert_ne!(a.public(), b.public());
    assert!(a.public().verify_strict(b"m", &a.sign(b"m")));
    Ok(())
}

#[test]
fn public_key_hex_and_display() -> TestResult {
    let key = alice().public();
    assert_eq!(key.to_string(), key.to_hex());
    assert_eq!(PublicKey::from_hex(&key.to_hex())?, key);
    assert_eq!(PublicKey::from_hex(&key.to_hex().to_uppercase())?, key);
    assert_eq!(PublicKey::from_bytes(*key.as_bytes()), key);
    for bad in ["", "abcd", &"g".repeat(64), &"0".repeat(65), &"é".repeat(32)] {
        assert!(matches!(PublicKey::from_hex(bad), Err(KeyError::InvalidHex { .. })));
    }
    Ok(())
}

#[test]
fn public_key_serializes_as_a_cbor_byte_string() -> TestResult {
    let key = alice().public();
    let mut cbor = Vec::new();
    ciborium::into_writer(&key, &mut cbor)?;
    // Major type 2 (byte string), one-byte length 32, then the key.
    assert_eq!(cbor[..2], [0x58, 0x20]);
    assert_eq!(&cbor[2..], key.as_bytes());
    let back: PublicKey = ciborium::from_reader(&cbor[..])?;
    assert_eq!(back, key);
    Ok(())
}

#[test]
fn write_keypair_round_trips() -> TestResult {
    let dir = tempfile::tempdir()?;
    let keys = dir.path().join("nested/keys");
    let (key_path, pub_path, public) = write_keypair(&keys, "alice")?;
    assert_eq!(key_path, keys.join("alice.key"));
    assert_eq!(pub_path, keys.join("alice.pub"));
    assert_eq!(SecretKey::load(&key_path)?.public(), public);
    assert_eq!(PublicKey::load(&pub_path)?, public);
    assert_eq!(fs::read_to_string(&pub_path)?, format!("roam-public-key ed25519 {public}\n"));
    let secret_text = fs::read_to_string(&key_path)?;
    assert!(secret_text.starts_with("roam-secret-key ed25519 "));
    assert!(secret_text.ends_with('\n'));
    assert_eq!(secret_text.len(), "roam-secret-key ed25519 ".len() + 64 + 1);
    Ok(())
}

#[cfg(unix)]
#[test]
fn write_keypair_creates_the_secret_key_with_mode_0600() -> TestResult {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir()?;
    let (key_path, _, _) = write_keypair(dir.path(), "alice")?;
    assert_eq!(fs::metadata(&key_path)?.permissions().mode() & 0o777, 0o600);
    Ok(())
}

#[test]
fn write_keypair_refuses_to_overwrite() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (key_path, _, first) = write_keypair(dir.path(), "alice")?;
    let err = write_keypair(dir.path(), "alice").unwrap_err();
    assert!(matches!(err, KeyError::Exists { ref path } if *path == key_path));
    // The original key is untouched.
    assert_eq!(SecretKey::load(&key_path)?.public(), first);
    Ok(())
}

#[test]
fn write_keypair_refuses_to_overwrite_a_lone_public_key() -> TestResult {
    // A trusted bob.pub must not be replaced by generating a "bob" key in the same place.
    let dir = tempfile::tempdir()?;
    let pub_path = dir.path().join("bob.pub");
    fs::write(&pub_path, "precious")?;
    let err = write_keypair(dir.path(), "bob").unwrap_err();
    assert!(matches!(err, KeyError::Exists { ref path } if *path == pub_path));
    assert_eq!(fs::read_to_string(&pub_path)?, "precious");
    assert!(!dir.path().join("bob.key").exists(), "no half-written pair left behind");
    Ok(())
}

#[test]
fn write_keypair_rejects_bad_names() -> TestResult {
    let dir = tempfile::tempdir()?;
    for name in ["", "a/b", "../x", ".hidden", "nul\0byte", "back\\slash"] {
        assert!(matches!(write_keypair(dir.path(), name), Err(KeyError::InvalidName { .. })), "{name:?} accepted");
    }
    assert_eq!(fs::read_dir(dir.path())?.count(), 0);
    Ok(())
}

#[test]
fn malformed_key_files_give_typed_errors_naming_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let hex64 = "ab".repeat(32);
    let cases: [(&str, String); 6] = [
        ("header.pub", format!("roam-public-key rsa {hex64}\n")),
        ("swapped.pub", format!("roam-secret-key ed25519 {hex64}\n")),
        ("hex.pub", format!("roam-public-key ed25519 {}zz\n", "ab".repeat(31))),
        ("short.pub", format!("roam-public-key ed25519 {}\n", "ab".repeat(31))),
        ("long.pub", format!("roam-public-key ed25519 {hex64}00\n")),
        ("twolines.pub", format!("roam-public-key ed25519 {hex64}\nmore\n")),
    ];
    for (file, text) in &cases {
        fs::write(dir.path().join(file), text)?;
    }
    let load = |f: &str| PublicKey::load(&dir.path().join(f)).unwrap_err();

    let err = load("header.pub");
    assert!(matches!(err, KeyError::WrongHeader { .. }), "{err}");
    assert!(err.to_string().contains("header.pub"));
    let err = load("swapped.pub");
    assert!(err.to_string().contains("SECRET"), "{err}");
    assert!(matches!(load("hex.pub"), KeyError::BadHex { .. }));
    assert!(matches!(load("short.pub"), KeyError::WrongLength { len: 62, .. }));
    assert!(matches!(load("long.pub"), KeyError::WrongLength { len: 66, .. }));
    assert!(matches!(load("twolines.pub"), KeyError::BadHex { .. }));
    assert!(matches!(load("missing.pub"), KeyError::Io { .. }));
    for (file, _) in &cases {
        assert!(load(file).to_string().contains(file), "{file}");
    }

    // A .pub given where a secret key is expected.
    fs::write(dir.path().join("ok.pub"), format!("roam-public-key ed25519 {hex64}\n"))?;
    let err = SecretKey::load(&dir.path().join("ok.pub")).unwrap_err();
    assert!(matches!(err, KeyError::WrongHeader { .. }));
    assert!(err.to_string().contains(".key"), "{err}");
    Ok(())
}

#[test]
fn key_files_accept_crlf_and_a_missing_newline() -> TestResult {
    let dir = tempfile::tempdir()?;
    let key = alice().public();
    for (file, text) in [
        ("crlf.pub", format!("roam-public-key ed25519 {key}\r\n")),
        ("bare.pub", format!("roam-public-key ed25519 {key}")),
    ] {
        let path = dir.path().join(file);
        fs::write(&path, text)?;
        assert_eq!(PublicKey::load(&path)?, key);
    }
    Ok(())
}
