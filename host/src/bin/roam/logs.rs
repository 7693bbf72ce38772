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

/// The log's filter: `RUST_LOG` if set (with the engine's internals held at warn unless it names
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
    // roam's spans are for traces: the log's lines stay as they are without them.
    directives.push(format!("{}=off", roam_host::trace::TARGET));
    EnvFilter::builder().parse_lossy(directives.join(","))
}

/// The trace exporter, flushed and stopped when dropped (the end of `main`).
pub struct Telemetry(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: the last traces may not have been exported: {e}");
        }
    }
}

/// The trace exporter, if `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
/// is set.
fn exporter() -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    roam_host::trace::exporter(None).map(Some)
}

/// Sets up the log for this process, and the trace exporter if one is configured.
pub fn init(format: LogFormat, verbose: u8, quiet: bool) -> Telemetry {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour only on a terminal, and not even there if NO_COLOR is set (no-color.org).
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()));
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let log_filter = filter(verbose, quiet);
    let (provider, failed) = match exporter() {
        Ok(provider) => (provider, None),
        Err(e) => (None, Some(e)),
    };
    let traces = provider.as_ref().map(|p| {
        roam_host::trace::layer(p).with_filter(tracing_subscriber::filter::filter_fn(roam_host::trace::traced))
    });
    tracing_subscriber::registry().with(fmt.with_filter(log_filter)).with(traces).init();
    if let Some(e) = failed {
        tracing::error!("traces are not exported: {e} (check OTEL_EXPORTER_OTLP_ENDPOINT)");
    }
    Telemetry(provider)
}
