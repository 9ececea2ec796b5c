//! A real HTTP server for URL-input tests: it serves one media file and has
//! routes that misbehave on purpose (a 404, a 503 that passes, a redirect to
//! a metadata address, an endless body, a slow body, one that stops
//! halfway and hangs), and counts the requests it gets so
//! a test can tell a refused fetch from one that was never refused.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

#[derive(Debug)]
pub struct MediaServer {
    pub addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    _server: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Served {
    media: Bytes,
    requests: Arc<AtomicUsize>,
    flaky_failures: Arc<AtomicUsize>,
}

/// How many times `/flaky.mp4` answers 503 before it serves the media.
pub const FLAKY_FAILURES: usize = 1;

/// How long `/slow.mp4` takes to send the media, in [`SLOW_CHUNKS`] even
/// pieces.
pub const SLOW_BODY: Duration = Duration::from_secs(4);
const SLOW_CHUNKS: u32 = 20;

impl MediaServer {
    /// Serves `media` at `/media.mp4` on a free loopback port.
    pub async fn start(media: Vec<u8>) -> anyhow::Result<Self> {
        let requests = Arc::new(AtomicUsize::new(0));
        let served = Served {
            media: media.into(),
            requests: requests.clone(),
            flaky_failures: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route("/media.mp4", get(media_file))
            .route("/flaky.mp4", get(flaky))
            .route("/to-metadata", get(to_metadata))
            .route("/endless.mp4", get(endless))
            .route("/slow.mp4", get(slow))
            .route("/hanging.mp4", get(hanging))
            .fallback(not_found)
            .with_state(served);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MediaServer {
            addr,
            requests,
            _server: server,
        })
    }

    /// `path` on this server, by address.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests received so far, on any route (unknown ones get 404).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn media_file(State(served): State<Served>) -> Response {
    served.requests.fetch_add(1, Ordering::SeqCst);
    ([(header::CONTENT_TYPE, "video/mp4")], served.media.clone()).into_response()
}

async fn not_found(State(served): State<Served>) -> StatusCode {
    served.requests.fetch_add(1, Ordering::SeqCst);
    StatusCode::NOT_FOUND
}

async fn flaky(State(served): State<Served>) -> Response {
    served.requests.fetch_add(1, Ordering::SeqCst);
    if served.flaky_failures.fetch_add(1, Ordering::SeqCst) < FLAKY_FAILURES {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    served.media.clone().into_response()
}

async fn to_metadata(State(served): State<Served>) -> Response {
    served.requests.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::FOUND,
        [(header::LOCATION, "http://169.254.169.254/latest/meta-data/")],
    )
        .into_response()
}

/// A body with no Content-Length that never ends, so only counting the
/// bytes as they arrive can stop it.
async fn endless(State(served): State<Served>) -> Response {
    served.requests.fetch_add(1, Ordering::SeqCst);
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    let stream = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
    Body::from_stream(stream).into_response()
}

/// The media, dribbled out over [`SLOW_BODY`].
async fn slow(State(served): State<Served>) -> Response {
    served.requests.fetch_add(1, Ordering::SeqCst);
    let media = served.media.clone();
    let piece = media.len().div_ceil(SLOW_CHUNKS as usize);
    let pieces = futures::StreamExt::then(
        futures::stream::iter(0..SLOW_CHUNKS as usize),
        move |index| {
            let media = media.clone();
            async move {
                tokio::time::sleep(SLOW_BODY / SLOW_CHUNKS).await;
                let start = (index * piece).min(media.len());
                let end = (start + piece).min(media.len());
                Ok::<_, std::io::Error>(media.slice(start..end))
            }
        },
    );
    let length = served.media.len().to_string();
    (
        [(header::CONTENT_LENGTH, length)],
        Body::from_stream(pieces),
    )
        .into_response()
}

/// Half the media, then nothing, the connection left open: a download of
/// it ends only when its reader gives up.
async fn hanging(State(served): State<Served>) -> Response {
    served.requests.fetch_add(1, Ordering::SeqCst);
    let half = served.media.slice(..served.media.len() / 2);
    let first = futures::stream::once(async move { Ok::<_, std::io::Error>(half) });
    let body = futures::StreamExt::chain(first, futures::stream::pending());
    let length = served.media.len().to_string();
    ([(header::CONTENT_LENGTH, length)], Body::from_stream(body)).into_response()
}
