//! Logging and tracing: human-readable logs filtered by `RUST_LOG`, and spans
//! exported over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. With
//! `REELMESH_LOG_SPANS=1` the log also gets a line with the busy and idle
//! time of every span as it closes: a quick look at where a job's time goes
//! without an OTLP collector.
//!
//! Keep the returned [`Telemetry`] alive for the life of the process: dropping
//! it flushes the spans that are still buffered.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{
    EnvFilter, fmt::format::FmtSpan, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber. Safe to call more than once (tests, the
/// all-in-one dev mode): later calls keep the first subscriber.
pub fn init_telemetry(service: &'static str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let span_events = match std::env::var_os("REELMESH_LOG_SPANS") {
        Some(value) if value != "0" => FmtSpan::CLOSE,
        _ => FmtSpan::NONE,
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_span_events(span_events);
    let provider =
        std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| otlp_provider(service));
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

fn otlp_provider(service: &'static str) -> Option<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|err| eprintln!("OTLP exporter disabled: {err}"))
        .ok()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    )
}
