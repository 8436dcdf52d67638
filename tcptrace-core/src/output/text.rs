//! Human-readable lines for `trace`: one per transition or TIME_WAIT event,
//! aligned columns, `-` where a value is unknown. A timewait socket found in
//! a new substate by asking the kernel reads `FIN_WAIT2 -> TIME_WAIT
//! (found)`, its MS the time since it was last known in FIN_WAIT2 (the
//! change happened within it).

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use super::{no_time_wait, reason_name, reuser};
use crate::{
    clock::hms_millis,
    model::{Event, EventKind, Lost, TcpState},
};

/// Column headings; addresses get 21 columns (IPv4 with port), longer IPv6
/// endpoints push the rest of the line right.
pub const HEADER: &str = "TIME          PID     COMM             WORKLOAD                 IP LOCAL                 REMOTE                EVENT                           MS";

fn endpoint(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Milliseconds with 3 decimals, or "-".
pub fn millis(ns: Option<u64>) -> String {
    match ns {
        Some(ns) => format!("{}.{:03}", ns / 1_000_000, (ns / 1_000) % 1_000),
        None => "-".to_string(),
    }
}

/// The EVENT column.
pub fn describe(e: &Event) -> String {
    let old = e.old.map_or("?", |s| s.name());
    match e.kind {
        EventKind::Transition if no_time_wait(e).is_some() => {
            format!("{old} -> {} (no TIME_WAIT: overflow)", e.new)
        }
        EventKind::Transition => format!("{old} -> {}", e.new),
        EventKind::TwBegin => {
            let sub = match e.new {
                TcpState::TimeWait => "",
                _ => " (FIN_WAIT2 orphan)",
            };
            format!("{old} -> TIME_WAIT begin{sub}")
        }
        EventKind::TwRearm => format!("TIME_WAIT rearm ({})", e.new),
        EventKind::TwEnd => {
            let reason = e.reason.map_or("?", reason_name);
            match reuser(e) {
                Some(r) => match r.comm {
                    Some(c) => format!(
                        "TIME_WAIT end: {reason} by {} ({})",
                        r.pid,
                        super::escape(&c.to_str_lossy())
                    ),
                    None => format!("TIME_WAIT end: {reason} by {}", r.pid),
                },
                None => format!("TIME_WAIT end: {reason}"),
            }
        }
        EventKind::Lost => "lost".to_string(),
        EventKind::Drop => "drop".to_string(),
        EventKind::Accept => "accepted".to_string(),
        EventKind::TwSubstate => format!("{old} -> {} (found)", e.new),
    }
}

/// Width of the `WORKLOAD` column.
pub const WORKLOAD_WIDTH: usize = 24;

/// `s` escaped and cut to `width` characters in the middle (`first…last`),
/// so that both a workload's kind and its distinguishing end stay visible.
pub fn cut_middle(s: &str, width: usize) -> String {
    let s = super::escape(s);
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= width || width < 3 {
        return s.into_owned();
    }
    let head = (width - 1) / 2;
    let tail = width - 1 - head;
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

pub fn write_event(w: &mut impl io::Write, e: &Event, wall_ns: u64) -> io::Result<()> {
    write_event_with(w, e, wall_ns, None)
}

/// [`write_event`] with the owner's workload display name (`-` when none).
pub fn write_event_with(
    w: &mut impl io::Write,
    e: &Event,
    wall_ns: u64,
    workload: Option<&str>,
) -> io::Result<()> {
    let workload = workload.map_or_else(|| "-".to_string(), |s| cut_middle(s, WORKLOAD_WIDTH));
    let (pid, comm) = match &e.owner {
        Some(o) => (
            o.pid.to_string(),
            super::escape(&o.comm.to_str_lossy()).into_owned(),
        ),
        None => ("-".to_string(), "-".to_string()),
    };
    writeln!(
        w,
        "{:<13} {:<7} {:<16} {:<24} {:<2} {:<21} {:<21} {:<31} {}",
        hms_millis(wall_ns),
        pid,
        comm,
        workload,
        match e.family {
            crate::model::Family::V4 => "4",
            crate::model::Family::V6 => "6",
        },
        endpoint(e.saddr, e.sport).to_string(),
        endpoint(e.daddr, e.dport).to_string(),
        describe(e),
        millis(e.prev_ns),
    )
}

pub fn write_lost(w: &mut impl io::Write, lost: &Lost, wall_ns: u64) -> io::Result<()> {
    writeln!(
        w,
        "{:<13} LOST {} events: ring buffer full {}, recursion misses {}, owner map full {}, probe failed {}",
        hms_millis(wall_ns),
        lost.total(),
        lost.ring_full,
        lost.recursion_misses,
        lost.map_full,
        lost.probe_failed
    )
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::model::{Comm, Family, Owner, Reuser, TwEndReason};

    /// 03:04:05.678 UTC on 1970-01-01.
    const WALL_NS: u64 = (3 * 3600 + 4 * 60 + 5) * 1_000_000_000 + 678_000_000;

    fn event(kind: EventKind, old: Option<TcpState>, new: TcpState) -> Event {
        Event {
            ts_ns: 1,
            kind,
            sk: 0x10,
            link: None,
            owner: None,
            netns: None,
            family: Family::V4,
            saddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            sport: 443,
            daddr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            dport: 50_000,
            old,
            new,
            prev_ns: None,
            reason: None,
            stack: None,
        }
    }

    /// Byte offset of a whole word in [`HEADER`].
    fn header_column(name: &str) -> usize {
        let mut at = 0;
        for word in HEADER.split(' ') {
            if word == name {
                return at;
            }
            at += word.len() + 1;
        }
        panic!("no column {name} in HEADER")
    }

    fn line(e: &Event) -> String {
        let mut out = Vec::new();
        write_event(&mut out, e, WALL_NS).expect("write to Vec");
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn millis_unknown_is_dash() {
        assert_eq!(millis(None), "-");
    }

    #[test]
    fn millis_has_three_truncated_decimals() {
        assert_eq!(millis(Some(1_234_567)), "1.234");
        assert_eq!(millis(Some(0)), "0.000");
        assert_eq!(millis(Some(999)), "0.000");
        assert_eq!(millis(Some(5_000)), "0.005");
        assert_eq!(millis(Some(60_000_000_000)), "60000.000");
    }

    #[test]
    fn describe_transition_is_old_arrow_new() {
        let e = event(
            EventKind::Transition,
            Some(TcpState::Established),
            TcpState::CloseWait,
        );
        assert_eq!(describe(&e), "ESTABLISHED -> CLOSE_WAIT");
    }

    #[test]
    fn describe_transition_with_unknown_old_uses_question_mark() {
        let e = event(EventKind::Transition, None, TcpState::SynSent);
        assert_eq!(describe(&e), "? -> SYN_SENT");
    }

    #[test]
    fn describe_tw_begin_time_wait() {
        let e = event(
            EventKind::TwBegin,
            Some(TcpState::FinWait2),
            TcpState::TimeWait,
        );
        assert_eq!(describe(&e), "FIN_WAIT2 -> TIME_WAIT begin");
    }

    #[test]
    fn describe_tw_begin_fin_wait2_substate_is_marked_orphan() {
        let e = event(
            EventKind::TwBegin,
            Some(TcpState::FinWait2),
            TcpState::FinWait2,
        );
        assert_eq!(
            describe(&e),
            "FIN_WAIT2 -> TIME_WAIT begin (FIN_WAIT2 orphan)"
        );
    }

    #[test]
    fn describe_tw_rearm_shows_substate() {
        let e = event(
            EventKind::TwRearm,
            Some(TcpState::FinWait2),
            TcpState::TimeWait,
        );
        assert_eq!(describe(&e), "TIME_WAIT rearm (TIME_WAIT)");
    }

    #[test]
    fn describe_tw_substate_is_old_arrow_new_found() {
        let e = event(
            EventKind::TwSubstate,
            Some(TcpState::FinWait2),
            TcpState::TimeWait,
        );
        assert_eq!(describe(&e), "FIN_WAIT2 -> TIME_WAIT (found)");
    }

    #[test]
    fn describe_tw_end_shows_reason() {
        let mut e = event(EventKind::TwEnd, Some(TcpState::TimeWait), TcpState::Close);
        e.reason = Some(TwEndReason::Expired);
        assert_eq!(describe(&e), "TIME_WAIT end: expired");
        e.reason = Some(TwEndReason::Killed);
        assert_eq!(describe(&e), "TIME_WAIT end: killed");
        e.reason = Some(TwEndReason::Purged);
        assert_eq!(describe(&e), "TIME_WAIT end: purged");
        e.reason = None;
        assert_eq!(describe(&e), "TIME_WAIT end: ?");
    }

    #[test]
    fn describe_tw_end_reused_names_the_reuser() {
        let mut e = event(EventKind::TwEnd, Some(TcpState::TimeWait), TcpState::Close);
        e.reason = Some(TwEndReason::Reused {
            by: Some(Reuser {
                pid: 4_242,
                comm: Some(Comm::from_name("pool")),
            }),
        });
        assert_eq!(describe(&e), "TIME_WAIT end: reused by 4242 (pool)");
        e.reason = Some(TwEndReason::Reused {
            by: Some(Reuser {
                pid: 4_242,
                comm: Some(Comm::from_name("a\x1b[2Jb")),
            }),
        });
        assert_eq!(describe(&e), "TIME_WAIT end: reused by 4242 (a\\x1b[2Jb)");
        e.reason = Some(TwEndReason::Reused {
            by: Some(Reuser {
                pid: 4_242,
                comm: None,
            }),
        });
        assert_eq!(describe(&e), "TIME_WAIT end: reused by 4242");
        e.reason = Some(TwEndReason::REUSED);
        assert_eq!(describe(&e), "TIME_WAIT end: reused");
    }

    #[test]
    fn describe_overflow_transition_says_no_time_wait() {
        let mut e = event(
            EventKind::Transition,
            Some(TcpState::FinWait2),
            TcpState::Close,
        );
        e.reason = Some(TwEndReason::Overflow);
        assert_eq!(describe(&e), "FIN_WAIT2 -> CLOSE (no TIME_WAIT: overflow)");
        e.old = Some(TcpState::Closing);
        assert_eq!(describe(&e), "CLOSING -> CLOSE (no TIME_WAIT: overflow)");
    }

    #[test]
    fn describe_lost_is_lost() {
        let e = event(EventKind::Lost, None, TcpState::Close);
        assert_eq!(describe(&e), "lost");
    }

    #[test]
    fn workloads_are_cut_in_the_middle_and_escaped() {
        assert_eq!(cut_middle("payments.service", 24), "payments.service");
        let long = "shop/payments-7d9f-abcde/application-container";
        let cut = cut_middle(long, 24);
        assert_eq!(cut.chars().count(), 24);
        assert_eq!(cut, "shop/paymen…on-container");
        assert!(!cut_middle("a\x1bb", 24).contains('\x1b'));
    }

    #[test]
    fn write_event_unknown_owner_prints_dashes_and_unknown_ms() {
        let e = event(
            EventKind::Transition,
            Some(TcpState::Established),
            TcpState::CloseWait,
        );
        let l = line(&e);
        assert!(l.starts_with("03:04:05.678 "), "{l:?}");
        assert!(l.ends_with("-\n"), "{l:?}");
        assert_eq!(l.matches('\n').count(), 1, "{l:?}");
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(
            cols,
            [
                "03:04:05.678",
                "-",
                "-",
                "-",
                "4",
                "10.0.0.1:443",
                "10.0.0.2:50000",
                "ESTABLISHED",
                "->",
                "CLOSE_WAIT",
                "-",
            ]
        );
        // pid then comm, each "-" surrounded by spaces.
        assert!(l.contains(" - "), "{l:?}");
        assert_eq!(l.find(" - "), Some(13), "pid column follows the time");
    }

    #[test]
    fn write_event_columns_line_up_with_header() {
        let mut e = event(
            EventKind::Transition,
            Some(TcpState::Established),
            TcpState::CloseWait,
        );
        e.owner = Some(Owner {
            pid: 4321,
            tid: 4322,
            comm: Comm::from_name("nginx"),
            cgroup: 1,
            from_listener: false,
        });
        e.prev_ns = Some(1_234_567);
        let l = line(&e);
        for (col, value) in [
            ("PID", "4321"),
            ("COMM", "nginx"),
            ("IP", "4"),
            ("LOCAL", "10.0.0.1:443"),
            ("REMOTE", "10.0.0.2:50000"),
            ("EVENT", "ESTABLISHED -> CLOSE_WAIT"),
            ("MS", "1.234"),
        ] {
            let at = header_column(col);
            assert_eq!(&l[at..at + value.len()], value, "column {col} in {l:?}");
        }
        assert!(l.ends_with(" 1.234\n"), "{l:?}");
    }

    #[test]
    fn write_event_ipv6_endpoints_are_bracketed() {
        let mut e = event(EventKind::TwEnd, Some(TcpState::TimeWait), TcpState::Close);
        e.family = Family::V6;
        e.saddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
        e.sport = 8080;
        e.daddr = IpAddr::V6("2001:db8::2".parse().unwrap());
        e.dport = 40_000;
        e.reason = Some(TwEndReason::Killed);
        let l = line(&e);
        assert!(l.contains(" 6 "), "{l:?}");
        assert!(l.contains("[::1]:8080"), "{l:?}");
        assert!(l.contains("[2001:db8::2]:40000"), "{l:?}");
        assert!(l.contains("TIME_WAIT end: killed"), "{l:?}");
    }

    #[test]
    fn write_lost_summarises_counts() {
        let lost = Lost {
            ring_full: 1,
            recursion_misses: 2,
            map_full: 3,
            probe_failed: 4,
        };
        let mut out = Vec::new();
        write_lost(&mut out, &lost, WALL_NS).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "03:04:05.678  LOST 10 events: ring buffer full 1, recursion misses 2, owner map full 3, probe failed 4\n"
        );
    }
}
