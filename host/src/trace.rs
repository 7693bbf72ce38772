//! One trace per agent journey, across hosts. roam's spans (a request, a launch, a visit, a
//! transfer, an arrival) have the target [`TARGET`]: the log leaves them out, so its lines stay
//! as they are, and an OpenTelemetry layer, when the binary installs one
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`), exports them. Without it they cost next to nothing.
//!
//! The trace context crosses hosts as a W3C `traceparent` string: the agent's record carries
//! its launch's (so every visit and transfer, on any host, is a child of the launch) and each
//! envelope its transfer's (so an arrival is a child of the transfer that sent it).

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of roam's spans.
pub const TARGET: &str = "roam_trace";

/// An OTLP/HTTP (protobuf) exporter of spans, batched on a thread of its own, off the request
/// path: to `endpoint` (a whole URL, `…/v1/traces`) if given, else where the standard variables
/// say (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, headers, timeout,
/// `OTEL_BSP_*`); its service is `OTEL_SERVICE_NAME`, else `roam`.
///
/// # Errors
/// If the endpoint is not a URL.
pub fn exporter(endpoint: Option<String>) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::WithExportConfig as _;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    let exporter = builder.build().map_err(|e| e.to_string())?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name("roam");
    }
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The layer that turns roam's spans into OpenTelemetry spans for `provider`, with their own
/// fields as attributes and no more (no source location, thread or busy time: each costs every
/// span); filter it with [`traced`].
pub fn layer<S>(provider: &opentelemetry_sdk::trace::SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider as _;
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("roam"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_context_activation(false)
}

/// What a trace takes: roam's spans, and the host's events at warn and above (which become
/// events of the span they happen in).
pub fn traced(meta: &tracing::Metadata<'_>) -> bool {
    meta.target() == TARGET || (meta.target().starts_with("roam_host") && *meta.level() <= tracing::Level::WARN)
}

/// The W3C `traceparent` of `span`, if it is exported.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span = context.span();
    let sc = span.span_context();
    sc.is_valid().then(|| format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// Makes `span` a child of the span `parent` names (a `traceparent` from another host or from
/// the agent's record); nothing if there is none, or it is malformed (it came over the network).
pub fn follow(span: &tracing::Span, parent: Option<&str>) {
    if let Some(sc) = parent.and_then(parse) {
        // Fails only without an OpenTelemetry layer, when there is nothing to link.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let sc = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        flags,
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_only_when_well_formed() -> Result<(), String> {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = parse(good).ok_or("a valid traceparent was not read")?;
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} was read");
        }
        Ok(())
    }

    #[test]
    fn without_an_exporter_nothing_is_carried() {
        let span = tracing::info_span!(target: TARGET, "visit");
        assert_eq!(traceparent(&span), None);
        follow(&span, Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
    }
}
