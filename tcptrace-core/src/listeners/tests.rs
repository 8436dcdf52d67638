//! The listener table: samples, counter attribution, kernel drops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::model::Comm;

const S: u64 = 1_000_000_000;

fn lo() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

fn sample(port: u16, queue: u32, limit: u32, drops: u64) -> ListenerSample {
    ListenerSample {
        netns: Some(7),
        family: Family::V4,
        addr: lo(),
        port,
        inode: u64::from(port),
        owner: Some(SeenOwner {
            pid: 42,
            comm: Comm::from_name("slowacceptd"),
        }),
        cgroup: None,
        queue,
        limit,
        drops: Some(drops),
    }
}

fn counters(overflows: u64, drops: u64) -> Vec<NetnsDropCounters> {
    vec![NetnsDropCounters {
        netns: 7,
        counters: DropCounters {
            listen_overflows: Some(overflows),
            listen_drops: Some(drops),
            req_qfull_drop: Some(0),
            ..Default::default()
        },
    }]
}

fn drop_to(port: u16, reason: DropReason, addr: IpAddr) -> SynDrop {
    SynDrop {
        ts_ns: 3 * S,
        netns: Some(7),
        family: Family::V4,
        local: addr,
        local_port: port,
        remote: lo(),
        remote_port: 40000,
        reason,
        kernel_reason: 0,
        syn: true,
        ack: false,
        rx_state: Some(TcpState::Listen),
        suppressed: 0,
    }
}

#[test]
fn a_full_queue_s_drops_are_accept_queue_full_and_the_normal_listener_has_none() {
    let mut t = ListenerTable::default();
    t.apply_sample(
        S,
        &[sample(8080, 0, 1, 0), sample(9090, 0, 128, 5)],
        &counters(100, 100),
    );
    t.apply_sample(
        2 * S,
        &[sample(8080, 2, 1, 76), sample(9090, 0, 128, 5)],
        &counters(176, 176),
    );
    let rows = t.rows(2 * S);
    assert_eq!(rows[0].listener, "127.0.0.1:8080");
    assert_eq!(rows[0].drops_total, 76);
    assert_eq!(rows[0].drops_by_reason.get("accept_queue_full"), Some(&76));
    assert_eq!(rows[0].comm.as_deref(), Some("slowacceptd"));
    assert_eq!(rows[0].accept_queue, 2);
    assert_eq!(rows[0].accept_queue_limit, 1);
    assert!((rows[0].drops_per_sec - 76.0).abs() < 1e-9);
    assert_eq!(rows[1].listener, "127.0.0.1:9090");
    assert_eq!(rows[1].drops_total, 0, "the first sample is a baseline");
    assert_eq!(t.namespaces[&7].unattributed, 0);
}

#[test]
fn drops_beyond_the_namespace_s_overflows_go_to_syn_queue_then_listen_drop() {
    let mut t = ListenerTable::default();
    let mut c = counters(0, 0);
    t.apply_sample(S, &[sample(8080, 0, 128, 0)], &c);
    c[0].counters = DropCounters {
        listen_overflows: Some(3),
        listen_drops: Some(10),
        req_qfull_drop: Some(4),
        ..Default::default()
    };
    t.apply_sample(2 * S, &[sample(8080, 0, 128, 10)], &c);
    let l = &t.rows(2 * S)[0];
    assert_eq!(l.drops_by_reason.get("accept_queue_full"), Some(&3));
    assert_eq!(l.drops_by_reason.get("syn_queue_full"), Some(&4));
    assert_eq!(l.drops_by_reason.get("listen_drop"), Some(&3));
    assert_eq!(l.main_reason, Some("syn_queue_full"));
}

#[test]
fn kernel_reported_drops_find_wildcard_listeners_and_are_not_counted_twice() {
    let mut t = ListenerTable::default();
    let mut wild = sample(8080, 0, 1, 0);
    wild.addr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    wild.family = Family::V6;
    t.apply_sample(S, &[wild.clone()], &counters(0, 0));
    t.apply_drop(&drop_to(8080, DropReason::AcceptQueueFull, lo()));
    // Received by a TIME_WAIT socket: not in the listener's count.
    let mut tw = drop_to(8080, DropReason::TimewaitPaws, lo());
    tw.rx_state = Some(TcpState::TimeWait);
    t.apply_drop(&tw);
    // The kernel's own count has the reported overflow in it.
    wild.drops = Some(3);
    t.apply_sample(2 * S, &[wild], &counters(3, 3));
    let l = &t.rows(2 * S)[0];
    assert_eq!(l.listener, "[::]:8080");
    assert_eq!(l.drops_by_reason.get("accept_queue_full"), Some(&3));
    assert_eq!(l.drops_by_reason.get("timewait_paws"), Some(&1));
    assert_eq!(l.drops_total, 4);
}

#[test]
fn drops_to_a_port_nobody_listens_on_are_kept_apart_and_bounded() {
    let mut t = ListenerTable::default();
    t.apply_sample(S, &[sample(8080, 0, 1, 0)], &counters(0, 0));
    for port in 0..(MAX_UNMATCHED as u16 + 50) {
        t.apply_drop(&drop_to(10_000 + port, DropReason::NoListener, lo()));
    }
    assert_eq!(t.unmatched.len(), MAX_UNMATCHED);
    assert_eq!(t.rows(2 * S)[0].drops_total, 0);
    assert_eq!(
        t.kernel_drops.get(DropReason::NoListener),
        MAX_UNMATCHED as u64 + 50
    );
}

#[test]
fn a_closed_listener_is_marked_and_a_reopened_one_starts_a_new_count() {
    let mut t = ListenerTable::default();
    t.apply_sample(S, &[sample(8080, 0, 1, 50)], &counters(0, 0));
    t.apply_sample(2 * S, &[], &counters(0, 0));
    assert!(t.rows(2 * S)[0].closed_age_ms.is_some());
    assert_eq!(t.find(Some(7), lo(), 8080), None);
    // Reopened with a fresh kernel count of 2 (all since it opened, its
    // namespace was sampled before): no negative or huge delta.
    t.apply_sample(3 * S, &[sample(8080, 0, 1, 2)], &counters(0, 0));
    t.apply_sample(4 * S, &[sample(8080, 0, 1, 4)], &counters(2, 2));
    let l = &t.rows(4 * S)[0];
    assert_eq!(l.closed_age_ms, None);
    assert_eq!(l.drops_total, 4);
}

#[test]
fn a_listener_opened_after_its_namespace_was_sampled_counts_its_whole_count() {
    let mut t = ListenerTable::default();
    t.apply_sample(S, &[sample(9090, 0, 128, 7)], &counters(0, 0));
    t.apply_sample(
        2 * S,
        &[sample(9090, 0, 128, 7), sample(8080, 2, 1, 38)],
        &counters(38, 38),
    );
    let rows = t.rows(2 * S);
    assert_eq!(rows[0].listener, "127.0.0.1:8080");
    assert_eq!(rows[0].drops_total, 38);
    assert_eq!(rows[0].drops_before_tracing, 0);
    assert_eq!(rows[1].drops_total, 0);
    assert_eq!(rows[1].drops_before_tracing, 7, "history, not new drops");
}

#[test]
fn an_overflow_counted_before_the_listener_s_count_moved_is_still_its_reason() {
    let mut t = ListenerTable::default();
    t.apply_sample(S, &[sample(8080, 0, 1, 0)], &counters(0, 0));
    // The drop lands between the dump and the counters' read.
    t.apply_sample(2 * S, &[sample(8080, 2, 1, 0)], &counters(1, 1));
    t.apply_sample(3 * S, &[sample(8080, 2, 1, 1)], &counters(1, 1));
    let l = &t.rows(3 * S)[0];
    assert_eq!(
        l.drops_by_reason.get("accept_queue_full"),
        Some(&1),
        "{l:?}"
    );
    assert_eq!(l.drops_total, 1);
}

#[test]
fn listen_drops_of_a_closed_listener_are_unattributed_and_reported_ones_are_not() {
    let mut t = ListenerTable::default();
    t.apply_sample(S, &[sample(8080, 0, 1, 0)], &counters(0, 0));
    // Two ACKs at a full queue, reported by the kernel: in the listener's
    // count and in ListenDrops, attributed.
    t.apply_drop(&drop_to(8080, DropReason::AcceptQueueFull, lo()));
    t.apply_drop(&drop_to(8080, DropReason::AcceptQueueFull, lo()));
    t.apply_sample(2 * S, &[sample(8080, 2, 1, 2)], &counters(2, 2));
    t.apply_sample(3 * S, &[sample(8080, 2, 1, 2)], &counters(2, 2));
    assert_eq!(t.namespaces[&7].unattributed, 0);
    // A listener that dropped 5 and closed before the sample.
    t.apply_sample(4 * S, &[sample(8080, 2, 1, 2)], &counters(7, 7));
    t.apply_sample(5 * S, &[sample(8080, 2, 1, 2)], &counters(7, 7));
    assert_eq!(t.namespaces[&7].unattributed, 5);
}

#[test]
fn a_reported_drop_at_the_listener_is_not_counted_again_from_its_count() {
    let mut t = ListenerTable::default();
    t.apply_sample(S, &[sample(8445, 0, 128, 0)], &counters(0, 0));
    // Three SYN+FIN segments: reported (TCP_FLAGS) and in the listener's
    // count (ss's d3), not in ListenDrops.
    for _ in 0..3 {
        t.apply_drop(&drop_to(8445, DropReason::BadFlags, lo()));
    }
    t.apply_sample(2 * S, &[sample(8445, 0, 128, 3)], &counters(0, 0));
    let l = &t.rows(2 * S)[0];
    assert_eq!(l.drops_total, 3, "{l:?}");
    assert_eq!(l.drops_by_reason.get("bad_flags"), Some(&3));
    assert_eq!(l.drops_by_reason.get("listen_drop"), None);
}

#[test]
fn a_huge_sample_is_bounded_and_gone_namespaces_are_forgotten() {
    let mut t = ListenerTable::default();
    let many: Vec<ListenerSample> = (0..5000u16).map(|p| sample(p, 0, 1, 0)).collect();
    let namespaces: Vec<NetnsDropCounters> = (0..1000u32)
        .map(|netns| NetnsDropCounters {
            netns,
            counters: DropCounters::default(),
        })
        .collect();
    t.apply_sample(S, &many, &namespaces);
    assert_eq!(t.listeners.len(), MAX_LISTENERS);
    assert_eq!(t.namespaces.len(), MAX_NAMESPACES);
    // Ten minutes of samples of namespace 7 alone.
    for i in 1..=601 {
        t.apply_sample(S + i * S, &[], &counters(0, 0));
    }
    assert_eq!(t.namespaces.keys().copied().collect::<Vec<_>>(), [7]);
}

#[test]
fn netstat_counters_parse_and_unknown_text_gives_none() {
    let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDrop PAWSPassive\n\
                TcpExt: 1 114 115 0 3\n\
                IpExt: InNoRoutes\nIpExt: 0\n";
    let c = DropCounters::from_netstat(text);
    assert_eq!(c.listen_overflows, Some(114));
    assert_eq!(c.listen_drops, Some(115));
    assert_eq!(c.paws_passive, Some(3));
    assert_eq!(c.syncookies_sent, Some(1));
    assert_eq!(c.paws_active, None);
    assert_eq!(
        DropCounters::from_netstat("garbage\n\u{1b}[31m"),
        DropCounters::default()
    );
}

#[test]
fn kernel_names_map_to_reasons() {
    assert_eq!(
        DropReason::from_kernel_name("TCP_LISTEN_OVERFLOW"),
        DropReason::AcceptQueueFull
    );
    assert_eq!(
        DropReason::from_kernel_name("SKB_DROP_REASON_TCP_RFC7323_TW_PAWS"),
        DropReason::TimewaitPaws
    );
    assert_eq!(
        DropReason::from_kernel_name("TCP_AOFAILURE"),
        DropReason::Auth
    );
    assert_eq!(
        DropReason::from_kernel_name("QDISC_DROP"),
        DropReason::Other
    );
    assert!(DropReason::traced_kernel_name("NO_SOCKET"));
    assert!(!DropReason::traced_kernel_name("TCP_OFOMERGE"));
    for r in DropReason::ALL {
        assert_eq!(DropReason::from_id(r.id()), Some(r));
        assert_eq!(DropReason::parse(r.name()), Some(r));
    }
    assert_eq!(DropReason::from_id(0), None);
    assert_eq!(DropReason::from_id(200), None);
}

proptest::proptest! {
    #[test]
    fn any_samples_and_drops_never_panic_and_totals_add_up(
        ops in proptest::collection::vec((0u8..3, 0u16..4, 0u32..5, 0u64..1000), 0..60)
    ) {
        let mut t = ListenerTable::default();
        let mut ts = 0u64;
        for (op, port, q, n) in ops {
            ts += S / 2;
            match op {
                0 => t.apply_sample(ts, &[sample(8000 + port, q, 2, n)], &counters(n, n)),
                1 => t.apply_drop(&drop_to(8000 + port, DropReason::Paws, lo())),
                _ => t.apply_sample(ts, &[], &counters(n / 2, n)),
            }
        }
        let rows = t.rows(ts);
        for r in &rows {
            proptest::prop_assert_eq!(r.drops_total, r.drops_by_reason.values().sum::<u64>());
            proptest::prop_assert!(r.drops_per_sec.is_finite() && r.drops_per_sec >= 0.0);
        }
    }
}
