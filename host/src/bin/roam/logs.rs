//! Where the log goes and what it shows: stderr, as text or JSON lines, filtered by `RUST_LOG`
//! or the command line's `-v`/`-q`.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// One line per event for people (colours only on a terminal).
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The crates whose debug output is an engine's internals, not roam's: quiet unless `RUST_LOG`
/// names them.
const INTERNALS: [&str; 4] = ["wasmtime", "cranelift", "regalloc2", "rustls"];

/// The filter: `RUST_LOG` if set (with the engine's internals held at warn unless it names
/// them), else info, roam at debug for `-v` and trace for `-vv`, warn and above for `-q`.
fn filter(verbose: u8, quiet: bool) -> EnvFilter {
    let spec = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec,
        _ if quiet => "warn".to_owned(),
        _ => match verbose {
            0 => "info".to_owned(),
            1 => "info,roam_host=debug,roam_keys=debug".to_owned(),
            _ => "info,roam_host=trace,roam_keys=trace".to_owned(),
        },
    };
    let mut directives = vec![spec.clone()];
    directives.extend(INTERNALS.iter().filter(|c| !spec.contains(*c)).map(|c| format!("{c}=warn")));
    EnvFilter::builder().parse_lossy(directives.join(","))
}

/// Sets up the log for this process.
pub fn init(format: LogFormat, verbose: u8, quiet: bool) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter(verbose, quiet))
        // Colour only on a terminal, and not even there if NO_COLOR is set (no-color.org).
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
