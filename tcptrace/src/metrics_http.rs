//! The HTTP edge of `--metrics ADDR`: a small server thread (tiny_http)
//! that, per `GET /metrics`, asks the command's loop for a fresh
//! [`crate::metrics::Exposition`] and serves it. The loop owns the engine,
//! so a scrape never races the events; it answers between two drains.

use std::{net::SocketAddr, sync::mpsc as std_mpsc, thread, time::Duration};

use tokio::sync::mpsc;

use crate::{engine::Engine, metrics, preflight::EnvError, source::Source};

/// How long a scrape waits for the loop before answering 503.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One scrape waiting for its text.
#[derive(Debug)]
pub struct Scrape {
    reply: std_mpsc::SyncSender<String>,
}

impl Scrape {
    /// Answers with the metrics of `engine` as it stands after draining
    /// `source`; `firing` lists the rule of each firing alert (`watch`).
    pub fn answer(self, source: &mut Source, engine: &mut Engine, firing: Option<&[&'static str]>) {
        source.drain(engine);
        let (now, wall) = source.now();
        let snap = engine.scrape_snapshot(now, wall, source.host_facts());
        let text = metrics::Exposition::new(&snap, &engine.aggs, firing).render();
        // The scraper may have given up: nothing to do then.
        let _ = self.reply.try_send(text);
    }
}

/// Scrapes for the loop to answer.
pub type Scrapes = mpsc::Receiver<Scrape>;

/// Listens on `addr` and serves `/metrics` from a thread. The error, if the
/// address cannot be bound, is one line for the user.
pub fn serve(addr: SocketAddr) -> Result<Scrapes, EnvError> {
    let server = tiny_http::Server::http(addr).map_err(|e| {
        EnvError(format!(
            "--metrics {addr}: cannot listen: {e} (choose a free address, e.g. 127.0.0.1:9464)"
        ))
    })?;
    let (tx, rx) = mpsc::channel::<Scrape>(4);
    thread::Builder::new()
        .name("tcptrace-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or("");
                let response = match (request.method(), path) {
                    (tiny_http::Method::Get, "/metrics") => {
                        let (reply, text) = std_mpsc::sync_channel(1);
                        if tx.blocking_send(Scrape { reply }).is_err() {
                            // The command is stopping.
                            break;
                        }
                        match text.recv_timeout(SCRAPE_TIMEOUT) {
                            Ok(body) => tiny_http::Response::from_string(body).with_header(
                                tiny_http::Header::from_bytes(
                                    "Content-Type",
                                    metrics::CONTENT_TYPE,
                                )
                                .expect("valid header"),
                            ),
                            Err(_) => tiny_http::Response::from_string("busy, try again\n")
                                .with_status_code(503),
                        }
                    }
                    (_, "/metrics") => {
                        tiny_http::Response::from_string("GET only\n").with_status_code(405)
                    }
                    _ => tiny_http::Response::from_string("tcptrace: metrics are at /metrics\n")
                        .with_status_code(404),
                };
                if let Err(e) = request.respond(response) {
                    log::debug!("metrics response failed: {e}");
                }
            }
        })
        .map_err(|e| EnvError(format!("--metrics: cannot start the server thread: {e}")))?;
    Ok(rx)
}

/// Waits for the next scrape, or forever without `--metrics`: for
/// `tokio::select!` arms.
pub async fn next(scrapes: &mut Option<Scrapes>) -> Option<Scrape> {
    if let Some(rx) = scrapes {
        if let Some(scrape) = rx.recv().await {
            return Some(scrape);
        }
        // The server thread ended: stop asking.
        *scrapes = None;
    }
    std::future::pending().await
}
