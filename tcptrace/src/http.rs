//! The metrics server of `--metrics ADDR`: hyper on a runtime of its own
//! thread, hardened because a DaemonSet opens it to the network. A scrape is
//! handed to the live loop ([`crate::session`]), which owns the engine (so a
//! scrape never races the events) and answers it between two drains; the
//! server only moves bytes.
//!
//! What a hostile or careless client can do, and what bounds it:
//! - huge or endless headers: [`MAX_HEADER_BYTES`], [`MAX_HEADERS`] and
//!   [`HEADER_TIMEOUT`] (hyper answers 431 / closes); a body is never read
//!   (a request announcing one gets 413 and the connection is closed), so
//!   `Content-Length: 99999999999` allocates nothing;
//! - idle or slow connections: a connection that sends no complete request
//!   within [`HEADER_TIMEOUT`] (from its opening, and again between
//!   keep-alive requests: hyper's header timer) is closed; a read stalled
//!   for [`IDLE_TIMEOUT`] or a write stalled for [`WRITE_TIMEOUT`] closes it
//!   too, and none lives longer than [`MAX_LIFETIME`];
//! - many connections: at most [`MAX_CONNECTIONS`] are open, at most
//!   [`MAX_PER_PEER`] from one address. At a cap, the connection idle for
//!   longest (of that peer, at the per-peer cap) is closed to make room,
//!   but never one younger than [`GRACE`], which has not had the time to
//!   send its request; with nothing to close the newcomer is refused. So
//!   one address flooding connections, idle or churning, can only take its
//!   own share, and the server keeps serving everyone else; accept errors
//!   (no fds left) are logged and retried, never a panic;
//! - a slow reader (pipelined scrapes, never reading): each connection is its
//!   own task, so it only stalls itself until its write times out; a
//!   connection has at most one scrape in flight; scrapes waiting together
//!   are rendered once by the loop;
//! - who may connect: `--metrics-allow CIDR`; a warning when the address is
//!   not loopback and no allow list is given.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::sync::{Notify, oneshot};
use tokio_io_timeout::TimeoutStream;

use crate::preflight::EnvError;
use tcptrace_core::metrics;

/// How long a scrape waits for the command's loop before answering 503.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once, at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections open at once from one address, at most.
pub const MAX_PER_PEER: usize = MAX_CONNECTIONS / 4;
/// A connection younger than this is never closed to make room.
pub const GRACE: Duration = Duration::from_secs(1);
/// Request line plus headers, in bytes (hyper's read buffer).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Headers in one request.
pub const MAX_HEADERS: usize = 64;
/// Time allowed for a whole request line and headers, from the opening of
/// the connection or the end of the previous answer.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A read stalled this long closes the connection (a backstop to the header
/// timer).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A response the client does not read for this long is abandoned.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// No connection lives longer (Prometheus simply reconnects).
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);

/// One scrape waiting for its text.
#[derive(Debug)]
pub struct Scrape {
    reply: oneshot::Sender<Bytes>,
}

impl Scrape {
    /// A scrape and where its answer arrives (the server's side of it; for
    /// tests of the loop too).
    pub fn channel() -> (Self, oneshot::Receiver<Bytes>) {
        let (reply, answer) = oneshot::channel();
        (Self { reply }, answer)
    }

    /// Sends the exposition text (the scraper may have given up: then
    /// nothing happens).
    pub fn answer(self, text: Bytes) {
        let _ = self.reply.send(text);
    }
}

/// How scrapes reach the loop; a scrape given back is answered 503.
pub type Deliver = Arc<dyn Fn(Scrape) -> Result<(), Scrape> + Send + Sync>;

/// Where to listen and who may connect.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub addr: SocketAddr,
    /// Clients allowed to connect; empty = anyone.
    pub allow: Vec<IpNet>,
}

/// Whether `peer` may connect under `allow` (IPv4-mapped IPv6 peers are
/// matched as IPv4).
pub fn allowed(allow: &[IpNet], peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    allow.is_empty() || allow.iter().any(|net| net.contains(&peer))
}

/// Listens on the address and serves `/metrics` from a thread of its own.
/// Binding errors are one line for the user.
pub fn serve(opts: ServerOptions, deliver: Deliver) -> Result<(), EnvError> {
    let addr = opts.addr;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
            EnvError(format!(
                "--metrics {addr}: cannot listen: {e} (choose a free address, e.g. 127.0.0.1:9464)"
            ))
        })?;
    if !addr.ip().is_loopback() && opts.allow.is_empty() {
        crate::say!(
            "warning: metrics on {addr} can be scraped from other hosts (they name processes and peers): limit them with --metrics-allow CIDR or a firewall"
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| EnvError(format!("--metrics: cannot start the server: {e}")))?;
    thread::Builder::new()
        .name("tcptrace-metrics".into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => accept_loop(l, Arc::new(opts.allow), deliver).await,
                    Err(e) => log::warn!("metrics server stopped: {e}"),
                }
            })
        })
        .map_err(|e| EnvError(format!("--metrics: cannot start the server thread: {e}")))?;
    Ok(())
}

/// The open connections, and who may make room for a newcomer.
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, ConnState>,
}

struct ConnState {
    peer: IpAddr,
    opened: Instant,
    /// Requests being answered.
    busy: u32,
    idle_since: Instant,
    close: Arc<Notify>,
}

impl Conns {
    /// Closes the connection idle for longest among those `pick` selects
    /// that are neither busy nor younger than [`GRACE`]; false if none.
    fn close_idlest(&mut self, now: Instant, pick: impl Fn(&ConnState) -> bool) -> bool {
        let idlest = self
            .open
            .iter()
            .filter(|(_, c)| pick(c) && c.busy == 0 && now.duration_since(c.opened) >= GRACE)
            .min_by_key(|(_, c)| c.idle_since)
            .map(|(&id, _)| id);
        match idlest.and_then(|id| self.open.remove(&id)) {
            Some(c) => {
                c.close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Registers a connection from `peer`, making room at a cap; `None`
    /// (refused) when nothing can be closed for it.
    fn admit(&mut self, peer: IpAddr, now: Instant) -> Option<(u64, Arc<Notify>)> {
        let from_peer = self.open.values().filter(|c| c.peer == peer).count();
        if from_peer >= MAX_PER_PEER && !self.close_idlest(now, |c| c.peer == peer) {
            return None;
        }
        if self.open.len() >= MAX_CONNECTIONS && !self.close_idlest(now, |_| true) {
            return None;
        }
        self.next_id += 1;
        let close = Arc::new(Notify::new());
        self.open.insert(
            self.next_id,
            ConnState {
                peer,
                opened: now,
                busy: 0,
                idle_since: now,
                close: close.clone(),
            },
        );
        Some((self.next_id, close))
    }

    fn set_busy(&mut self, id: u64, busy: bool) {
        if let Some(c) = self.open.get_mut(&id) {
            if busy {
                c.busy += 1;
            } else {
                c.busy = c.busy.saturating_sub(1);
                c.idle_since = Instant::now();
            }
        }
    }
}

type SharedConns = Arc<Mutex<Conns>>;

fn lock(conns: &SharedConns) -> std::sync::MutexGuard<'_, Conns> {
    // A panic while holding the lock cannot leave the table inconsistent
    // in a way that matters: keep serving.
    conns.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: tokio::net::TcpListener, allow: Arc<Vec<IpNet>>, scrapes: Deliver) {
    let conns: SharedConns = Arc::default();
    let mut last_error_logged: Option<Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: log at most every 10 s, back off, go on.
                if last_error_logged.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    crate::say!("metrics server: cannot accept a connection: {e}");
                    last_error_logged = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !allowed(&allow, peer.ip()) {
            log::debug!("metrics: refused {peer} (not in --metrics-allow)");
            continue;
        }
        let admitted = lock(&conns).admit(peer.ip().to_canonical(), Instant::now());
        let Some((id, close)) = admitted else {
            log::debug!("metrics: refused {peer}: no room");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conns = conns.clone();
        let scrapes = scrapes.clone();
        tokio::spawn(async move {
            serve_connection(stream, id, &conns, scrapes, close).await;
            lock(&conns).open.remove(&id);
        });
        // Let the connections run between accepts: a flood of them must not
        // pile up unserved (and unclosed) behind the accept loop.
        tokio::task::yield_now().await;
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    id: u64,
    conns: &SharedConns,
    scrapes: Deliver,
    close: Arc<Notify>,
) {
    let mut stream = TimeoutStream::new(stream);
    stream.set_read_timeout(Some(IDLE_TIMEOUT));
    stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let io = TokioIo::new(Box::pin(stream));
    let service = service_fn(|req: Request<Incoming>| {
        let scrapes = scrapes.clone();
        lock(conns).set_busy(id, true);
        async move {
            let response = respond(&req, &scrapes).await;
            lock(conns).set_busy(id, false);
            Ok::<_, Infallible>(response)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let connection = builder.serve_connection(io, service);
    let mut connection: Pin<&mut _> = std::pin::pin!(connection);
    tokio::select! {
        r = connection.as_mut() => {
            if let Err(e) = r {
                log::debug!("metrics connection: {e}");
            }
        }
        _ = close.notified() => {}
        _ = tokio::time::sleep(MAX_LIFETIME) => {}
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// The answer to one request.
async fn respond(req: &Request<Incoming>, scrapes: &Deliver) -> Response<Full<Bytes>> {
    let announces_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if announces_body {
        // Never read: refuse, and close (the body is still on the wire).
        let mut r = text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "tcptrace: requests carry no body\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    if req.uri().path() != "/metrics" {
        return text(StatusCode::NOT_FOUND, "tcptrace: metrics are at /metrics\n");
    }
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return r;
    }
    let (scrape, body) = Scrape::channel();
    if scrapes(scrape).is_err() {
        // Many scrapes at once, or the command is stopping.
        return text(StatusCode::SERVICE_UNAVAILABLE, "busy, try again\n");
    }
    match tokio::time::timeout(SCRAPE_TIMEOUT, body).await {
        Ok(Ok(body)) => {
            let mut r = Response::new(Full::new(body));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            r
        }
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "busy, try again\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_matches_networks_and_mapped_addresses() {
        let allow: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(allowed(&allow, "10.1.2.3".parse().unwrap()));
        assert!(allowed(&allow, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(allowed(&allow, "::1".parse().unwrap()));
        assert!(!allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(allowed(&[], "192.0.2.1".parse().unwrap()));
    }

    fn peer(i: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, i])
    }

    #[test]
    fn at_the_cap_the_idlest_old_connection_makes_room_and_busy_or_young_ones_stay() {
        let t0 = Instant::now();
        let later = t0 + GRACE;
        let mut conns = Conns::default();
        // Four peers fill the server, each up to its own cap.
        let first: Vec<u64> = (0..MAX_CONNECTIONS)
            .map(|i| conns.admit(peer((i / MAX_PER_PEER) as u8), t0).unwrap().0)
            .collect();
        // Young connections are not closed for a newcomer: refused.
        assert!(conns.admit(peer(9), t0).is_none());
        // All but the first are busy: the first is closed for the newcomer.
        for id in &first[1..] {
            conns.set_busy(*id, true);
        }
        assert!(conns.admit(peer(9), later).is_some());
        assert!(!conns.open.contains_key(&first[0]));
        assert_eq!(conns.open.len(), MAX_CONNECTIONS);
        // Nothing idle and old is left: refused.
        assert!(conns.admit(peer(9), later).is_none());
        assert_eq!(conns.open.len(), MAX_CONNECTIONS);
    }

    #[test]
    fn one_address_only_takes_its_own_share() {
        let t0 = Instant::now();
        let mut conns = Conns::default();
        for _ in 0..MAX_PER_PEER {
            assert!(conns.admit(peer(1), t0).is_some());
        }
        // A flood from the same address: refused while its own are young,
        // then it can only replace its own.
        assert!(conns.admit(peer(1), t0).is_none());
        assert!(conns.admit(peer(1), t0 + GRACE).is_some());
        let from_1 = conns.open.values().filter(|c| c.peer == peer(1)).count();
        assert_eq!(from_1, MAX_PER_PEER);
        // Everyone else still gets in.
        assert!(conns.admit(peer(2), t0).is_some());
    }
}
