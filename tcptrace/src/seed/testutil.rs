//! Test fixture shared by the seed tests: real loopback connections driven
//! into known TCP states (LISTEN, ESTABLISHED, CLOSE_WAIT, TIME_WAIT), so the
//! dump is checked against the kernel rather than against canned bytes.

use std::{
    collections::BTreeMap,
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use tcptrace_core::model::{SeenSocket, TcpState};

/// Live sockets on one listener port. Dropping it closes everything held.
pub(crate) struct Conns {
    pub port: u16,
    /// Client port of the ESTABLISHED pair.
    pub est_client: u16,
    /// Client port whose server side sits in CLOSE_WAIT (client side is an
    /// orphan in FIN_WAIT2).
    pub close_wait_client: u16,
    /// Client port now in TIME_WAIT.
    pub time_wait_client: u16,
    _held: Vec<TcpStream>,
    _listener: TcpListener,
}

impl Conns {
    pub fn build_v4() -> Self {
        Self::build(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    pub fn build_v6() -> Self {
        Self::build(IpAddr::V6(Ipv6Addr::LOCALHOST))
    }

    fn build(ip: IpAddr) -> Self {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind loopback listener");
        let addr = listener.local_addr().unwrap();
        let connect = || {
            let c = TcpStream::connect(addr).expect("connect to loopback listener");
            let (s, _) = listener.accept().expect("accept");
            let port = c.local_addr().unwrap().port();
            (c, s, port)
        };

        // ESTABLISHED on both sides.
        let (est_c, est_s, est_client) = connect();

        // Client closes, server keeps its end: server CLOSE_WAIT.
        let (cw_c, cw_s, close_wait_client) = connect();
        drop(cw_c);

        // Client half-closes, server reads EOF and closes, client reads EOF
        // and closes: the client (active closer) ends in TIME_WAIT.
        let (mut tw_c, mut tw_s, time_wait_client) = connect();
        tw_c.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(tw_s.read(&mut buf).unwrap(), 0, "server sees EOF");
        drop(tw_s);
        assert_eq!(tw_c.read(&mut buf).unwrap(), 0, "client sees EOF");
        drop(tw_c);

        let conns = Self {
            port: addr.port(),
            est_client,
            close_wait_client,
            time_wait_client,
            _held: vec![est_c, est_s, cw_s],
            _listener: listener,
        };
        conns.settle();
        conns
    }

    /// The state counts the fixture ends in.
    pub fn expected_counts() -> BTreeMap<TcpState, usize> {
        BTreeMap::from([
            (TcpState::Listen, 1),
            (TcpState::Established, 2),
            (TcpState::CloseWait, 1),
            (TcpState::FinWait2, 1),
            (TcpState::TimeWait, 1),
        ])
    }

    /// Sockets of `all` on this fixture's listener port (either end).
    pub fn matching<'a>(&self, all: &'a [SeenSocket]) -> Vec<&'a SeenSocket> {
        all.iter()
            .filter(|s| s.sport == self.port || s.dport == self.port)
            .collect()
    }

    /// Waits (bounded) for in-flight FIN/ACKs on loopback to land, so every
    /// socket has reached its final state.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let all = super::sock_diag::dump_tcp().expect("sock_diag dump");
            if state_counts(&self.matching(&all)) == Self::expected_counts()
                || Instant::now() > deadline
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

pub(crate) fn state_counts(socks: &[&SeenSocket]) -> BTreeMap<TcpState, usize> {
    let mut out = BTreeMap::new();
    for s in socks {
        *out.entry(s.state).or_default() += 1;
    }
    out
}

/// Median (CPU of this thread, wall) µs of `runs` calls of `f` (the
/// kernel's sock_diag work runs in the calling thread: requests in
/// sendmsg, dumps in recvmsg).
pub(crate) fn cost(runs: usize, mut f: impl FnMut()) -> (u64, u64) {
    use crate::source::timewait_check::thread_cpu_ns;
    let mut cpu = Vec::new();
    let mut wall = Vec::new();
    for _ in 0..runs {
        let (c, w) = (thread_cpu_ns(), Instant::now());
        f();
        cpu.push((thread_cpu_ns() - c) / 1_000);
        wall.push(w.elapsed().as_micros() as u64);
    }
    cpu.sort_unstable();
    wall.sort_unstable();
    (cpu[runs / 2], wall[runs / 2])
}
