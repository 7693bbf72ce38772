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
