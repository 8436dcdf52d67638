//! Measures userspace memory per live socket with a counting allocator: the
//! connection table holding 200,000 live connections, bytes / sockets; and the
//! aggregates' bounded overhead (histograms per owner and per peer are capped).

use tcptrace_core::{conn::ConnTable, engine::Engine, stats::MAX_KEYED_HISTOGRAMS};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
#[path = "support/synthetic.rs"]
mod synthetic;

use synthetic::accepted;

#[test]
fn table_memory_per_live_socket_is_at_most_256_bytes() {
    const N: u64 = 200_000;
    let before = counting_alloc::allocated();
    let mut table = ConnTable::new(1_000_000);
    for i in 0..N {
        for e in accepted(i) {
            table.apply(&e);
        }
    }
    assert_eq!(table.len() as u64, N);
    let bytes = counting_alloc::allocated() - before;
    let per = bytes as f64 / N as f64;
    eprintln!("connection table: {per:.1} bytes per live socket ({bytes} bytes for {N})");
    assert!(per <= 256.0, "{per:.1} bytes per live socket");
}

#[test]
fn aggregates_are_bounded_whatever_the_number_of_peers() {
    let mut engine = Engine::new(1_000_000);
    for i in 0..2_000u64 {
        for e in accepted(i) {
            engine.apply(&e);
        }
    }
    assert_eq!(engine.aggs.by_peer.len(), MAX_KEYED_HISTOGRAMS);
    assert!(engine.aggs.untracked_keys > 0);
}
