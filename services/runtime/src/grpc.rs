//! How every reelmesh gRPC server is put together: request tracing as a
//! tower layer, health and reflection beside the real services, and a serve
//! loop that stops when the shutdown token is cancelled.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    service::Routes,
    transport::{
        Server,
        server::{Router, TcpIncoming},
    },
};
pub use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};
use tower_http::{
    classify::{GrpcErrorsAsFailures, SharedClassifier},
    trace::TraceLayer,
};

/// A tonic router with our tower layers applied.
pub type TracedRouter = Router<Stack<TraceLayer<SharedClassifier<GrpcErrorsAsFailures>>, Identity>>;

/// Starts a router with health and reflection mounted; the caller adds its
/// own services and marks them serving on the returned reporter.
pub fn router() -> Result<(TracedRouter, HealthReporter), tonic_reflection::server::Error> {
    router_with_http(axum::Router::new())
}

/// Like [`router`], and also serves `http`'s plain HTTP routes (signed
/// links) on the same port: HTTP/1.1 is accepted beside gRPC's HTTP/2.
pub fn router_with_http(
    http: axum::Router,
) -> Result<(TracedRouter, HealthReporter), tonic_reflection::server::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(reelmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(reelmesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let router = Server::builder()
        // Unary calls that hang are cut off; streams are not, since tonic
        // times out only the call's headers, never a long WatchJob body.
        .timeout(Duration::from_secs(60))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .accept_http1(true)
        .layer(TraceLayer::new_for_grpc())
        .add_routes(Routes::from(http))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    Ok((router, reporter))
}

/// Serves until `shutdown` is cancelled, then lets in-flight calls finish.
pub async fn serve(
    router: TracedRouter,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    router
        // NODELAY by hand: with an incoming stream tonic ignores its own
        // `tcp_nodelay`, and Nagle plus delayed ACKs put ~40 ms on some
        // small responses (measured by bench/queue.sh).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await
}

/// For services whose only gRPC surface is health (render, notify): serves
/// it in the background, reporting SERVING, until `shutdown`.
pub async fn spawn_health_server(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    tonic_reflection::server::Error,
> {
    let (router, health) = router()?;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    Ok(tokio::spawn(serve(router, listener, shutdown)))
}
