//! The transitions the eBPF transition program took on a CPU, for its twin
//! (see [`Handled`]). Here rather than in the eBPF crate so the ring's
//! logic is unit-tested on the host; only the eBPF program uses it.

/// How many of the transition program's last transitions its twin knows.
pub const HANDLED: usize = 16;

/// The transitions the main transition program took on this CPU, most
/// recent at `next - 1`, each as `sk + new state`. The kernel skips a
/// program already running on the CPU and counts a recursion miss from the
/// moment it enters its dispatcher, before the program's first instruction:
/// a busy flag the program sets leaves windows at both ends where a nested
/// transition is missed and the twin, seeing no flag, skips it too. The
/// twin instead takes every transition the main program did not record:
/// recorded first thing and consumed by the twin's check, so the only ones
/// it repeats are those pushed out by [`HANDLED`] newer ones between the
/// two programs' runs of one transition (a softirq in that gap taking 16
/// transitions on this CPU), and the only ones it skips wrongly match an
/// entry a skipped run of the twin left behind.
#[repr(C)]
pub struct Handled {
    pub ring: [u64; HANDLED],
    pub next: u32,
    pub _pad: u32,
}

impl Handled {
    /// The key of a transition of `sk` to `new`.
    #[inline(always)]
    pub fn key(sk: u64, new: u32) -> u64 {
        sk.wrapping_add(u64::from(new))
    }

    #[inline(always)]
    pub fn record(&mut self, key: u64) {
        let i = (self.next as usize) % HANDLED;
        if let Some(slot) = self.ring.get_mut(i) {
            *slot = key;
        }
        self.next = self.next.wrapping_add(1);
    }

    /// Whether `key` is among the recorded, newest first; a match is
    /// consumed (the twin runs once per transition, right after the main
    /// program: the ring stays nearly empty, so a socket address the slab
    /// hands out again cannot match a stale entry).
    #[inline(always)]
    pub fn take(&mut self, key: u64) -> bool {
        let mut i = 0;
        while i < HANDLED {
            let at = (self.next.wrapping_sub(1 + i as u32) as usize) % HANDLED;
            if let Some(slot) = self.ring.get_mut(at)
                && *slot == key
            {
                *slot = 0;
                return true;
            }
            i += 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Handled {
        Handled {
            ring: [0; HANDLED],
            next: 0,
            _pad: 0,
        }
    }

    #[test]
    fn a_recorded_transition_is_taken_once() {
        let mut h = ring();
        h.record(Handled::key(0x1000, 1));
        assert!(h.take(Handled::key(0x1000, 1)));
        assert!(!h.take(Handled::key(0x1000, 1)), "consumed");
        assert!(!h.take(Handled::key(0x1000, 8)), "another state");
    }

    #[test]
    fn the_ring_wraps_and_keeps_the_last_ones() {
        let mut h = ring();
        for i in 0..(HANDLED as u64 + 5) {
            h.record(Handled::key(0x1000 * (i + 1), 1));
        }
        // The five oldest were pushed out; the last HANDLED are there.
        assert!(!h.take(Handled::key(0x1000, 1)));
        assert!(!h.take(Handled::key(0x5000, 1)));
        for i in 5..(HANDLED as u64 + 5) {
            assert!(h.take(Handled::key(0x1000 * (i + 1), 1)), "{i}");
        }
        // The counter wraps around without losing the slots' order.
        h.next = u32::MAX;
        h.record(Handled::key(0x9000, 2));
        h.record(Handled::key(0xa000, 2));
        assert!(h.take(Handled::key(0x9000, 2)) && h.take(Handled::key(0xa000, 2)));
    }
}
