//! A fixed set of HDR histograms, one per duration we report, in microseconds
//! (1 µs .. 1 day, 2 significant digits: ~1% error, a few KiB each).

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HistKind {
    /// SYN_SENT -> ESTABLISHED (we connected).
    HandshakeConnect,
    /// SYN_RECV -> ESTABLISHED (we accepted; the child socket's part).
    HandshakeAccept,
    /// Whole lifecycle, first state to CLOSE.
    Lifetime,
    Established,
    CloseWait,
    FinWait1,
    FinWait2,
    LastAck,
    TimeWait,
}

impl HistKind {
    pub const ALL: [HistKind; 9] = [
        Self::HandshakeConnect,
        Self::HandshakeAccept,
        Self::Lifetime,
        Self::Established,
        Self::CloseWait,
        Self::FinWait1,
        Self::FinWait2,
        Self::LastAck,
        Self::TimeWait,
    ];

    /// The histogram a state's duration goes to, if any.
    pub fn of_duration(d: &crate::conn::StateDuration) -> Option<Self> {
        use crate::model::TcpState;
        Some(match (d.state, d.handshake) {
            (TcpState::SynSent, true) => Self::HandshakeConnect,
            (TcpState::SynRecv, true) => Self::HandshakeAccept,
            (TcpState::Established, _) => Self::Established,
            (TcpState::CloseWait, _) => Self::CloseWait,
            (TcpState::FinWait1, _) => Self::FinWait1,
            (TcpState::FinWait2, _) => Self::FinWait2,
            (TcpState::LastAck, _) => Self::LastAck,
            _ => return None,
        })
    }

    /// The JSON key.
    pub const fn name(self) -> &'static str {
        match self {
            Self::HandshakeConnect => "handshake_connect",
            Self::HandshakeAccept => "handshake_accept",
            Self::Lifetime => "lifetime",
            Self::Established => "established",
            Self::CloseWait => "close_wait",
            Self::FinWait1 => "fin_wait1",
            Self::FinWait2 => "fin_wait2",
            Self::LastAck => "last_ack",
            Self::TimeWait => "time_wait",
        }
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HistSummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One lazily allocated histogram per [`HistKind`] (u32 counts: ~16 KiB each
/// once used), so a peer seen only in TIME_WAIT costs one histogram, not nine.
#[derive(Clone, Default)]
pub struct Histos([Option<Box<Histogram<u32>>>; 9]);

const MAX_US: u64 = 86_400_000_000;

impl Histos {
    pub fn record(&mut self, kind: HistKind, ns: u64) {
        let us = (ns / 1_000).clamp(1, MAX_US);
        self.0[kind as usize]
            .get_or_insert_with(|| {
                Box::new(Histogram::new_with_bounds(1, MAX_US, 2).expect("valid bounds"))
            })
            .saturating_record(us);
    }

    pub fn get(&self, kind: HistKind) -> Option<&Histogram<u32>> {
        self.0[kind as usize].as_deref()
    }

    pub fn summary(&self, kind: HistKind) -> HistSummary {
        let Some(h) = self.get(kind).filter(|h| !h.is_empty()) else {
            return HistSummary::default();
        };
        let ms = |us: u64| us as f64 / 1_000.0;
        // One pass for the three (`value_at_quantile` each would walk the
        // counts again: `top` summarises hundreds of these per refresh).
        let mut q = h.value_at_quantiles([0.50, 0.90, 0.99]);
        let mut next = || ms(q.next().unwrap_or(0));
        HistSummary {
            count: h.len(),
            p50_ms: next(),
            p90_ms: next(),
            p99_ms: next(),
            max_ms: ms(h.max()),
        }
    }
}
