//! Hostile modules shared by the tests and the benchmark of other clients' latency
//! (host/benches/hostile.rs includes this file by path): only the standard library.

/// A storm of diagnostic log calls, until the call's deadline stops it.
pub const LOG_STORM: &str = r#"(module
  (import "roam" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "storm")
  (func (export "roam_query") (loop $l (call $log (i32.const 2) (i32.const 0) (i32.const 5)) (br $l))))"#;

/// A storm of table queries, each cursor closed at once, until the deadline stops it.
pub const CURSOR_STORM: &str = r#"(module
  (import "roam" "resource_open" (func $open (param i32 i32) (result i64)))
  (import "roam" "table_query" (func $query (param i32 i32 i32 i32 i32) (result i64)))
  (import "roam" "cursor_close" (func $close (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "sales")
  (data (i32.const 16) "SELECT 1")
  (func (export "roam_query") (local $h i32)
    (local.set $h (i32.wrap_i64 (call $open (i32.const 0) (i32.const 5))))
    (loop $l
      (call $close (i32.wrap_i64 (call $query (local.get $h) (i32.const 16) (i32.const 8) (i32.const 0) (i32.const 0))))
      (br $l))))"#;
