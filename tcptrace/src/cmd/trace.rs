//! `tcptrace trace`: every transition and TIME_WAIT event as it is drained,
//! as text or JSON Lines, with a line for events lost every second while
//! losing and a summary at exit.
//!
//! Connection attempts the kernel dropped are `drop` lines
//! ([`tcptrace_core::output::drops`]): the ones the kernel reports one by
//! one, rate-limited per listener (or destination) and reason with counts,
//! and each listener's drop count deltas between sock_diag samples. `trace`
//! has no engine: it keeps its own listener table for those deltas.

use std::{
    io::{self, Write},
    process::ExitCode,
};

use anyhow::Result;
use tcptrace_core::{
    clock::WallClock,
    listeners::SynDrop,
    model::{Event, EventKind, Lost},
    output::{
        drops::{self, DropFeed, DropLine},
        json, text,
    },
    record::Record,
    workload::Workload,
};

use super::Edges;
use crate::{
    cli::TraceConfig,
    session::{Consumer, Ctx, Flow, Hangup, Options},
    source::{Live, Source},
};

/// Writes events in the chosen format; counts what it wrote.
pub struct Printer<W: Write> {
    out: W,
    json: bool,
    clock: WallClock,
    pub printed: u64,
}

impl<W: Write> Printer<W> {
    pub fn new(out: W, json: bool, clock: WallClock) -> Self {
        Self {
            out,
            json,
            clock,
            printed: 0,
        }
    }

    pub fn header(&mut self) -> io::Result<()> {
        if !self.json {
            writeln!(self.out, "{}", text::HEADER)?;
        }
        Ok(())
    }

    /// One event (owner updates from the accept hook feed the engine only:
    /// `trace` shows transitions and TIME_WAIT).
    pub fn event(&mut self, e: &Event) -> io::Result<()> {
        self.event_with(e, None)
    }

    /// One event with its owner's workload (the `WORKLOAD` column and the
    /// JSON workload fields; `-`/null when `None`).
    pub fn event_with(&mut self, e: &Event, workload: Option<&Workload>) -> io::Result<()> {
        if e.kind == EventKind::Accept {
            return Ok(());
        }
        let wall = self.clock.wall_ns(e.ts_ns);
        if self.json {
            json::write_event_with(&mut self.out, e, wall, workload)?;
        } else {
            text::write_event_with(&mut self.out, e, wall, workload.map(|w| &*w.display))?;
        }
        self.printed += 1;
        Ok(())
    }

    /// A `drop` line (counted with the events, for `--count`).
    pub fn drop_line(&mut self, d: &DropLine) -> io::Result<()> {
        let wall = self.clock.wall_ns(d.mono_ns);
        if self.json {
            drops::write_json(&mut self.out, d, wall)?;
        } else {
            drops::write_text(&mut self.out, d, wall)?;
        }
        self.printed += 1;
        Ok(())
    }

    /// A lost-events line stamped with the (monotonic) time of the loss.
    pub fn lost_at(&mut self, lost: &Lost, mono_ns: u64) -> io::Result<()> {
        let wall = self.clock.wall_ns(mono_ns);
        if self.json {
            json::write_lost(&mut self.out, lost, wall)
        } else {
            text::write_lost(&mut self.out, lost, wall)
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// `trace` as a consumer of the loop.
pub struct Trace<W: Write> {
    pub printer: Printer<W>,
    limit: u64,
    /// The listener table and the rate limiter of `drop` lines.
    pub drops: DropFeed,
}

impl<W: Write> Trace<W> {
    /// Prints to `out`; stops after `count` events.
    pub fn new(out: W, json: bool, clock: WallClock, count: Option<u64>) -> Self {
        Self {
            printer: Printer::new(out, json, clock),
            limit: count.unwrap_or(u64::MAX),
            drops: DropFeed::default(),
        }
    }

    /// Prints `lines` up to the `--count` limit.
    fn drop_lines(&mut self, lines: Vec<DropLine>) -> io::Result<()> {
        for l in lines {
            if self.printer.printed >= self.limit {
                break;
            }
            self.printer.drop_line(&l)?;
        }
        Ok(())
    }

    fn kernel_drop(&mut self, d: &SynDrop, source: &dyn Source) -> io::Result<()> {
        // The running kernel's name (the live tracer read them from the
        // tracepoint's format); none from other sources.
        let name = source.drop_reason_name(d.kernel_reason);
        let lines = self.drops.drop(d, name);
        self.drop_lines(lines)
    }
}

impl<W: Write> Consumer for Trace<W> {
    fn start(&mut self, ctx: &mut Ctx<'_>) -> Result<()> {
        super::banner(ctx, "tracing TCP state changes");
        self.printer.header()?;
        self.printer.flush()?;
        Ok(())
    }

    fn record(&mut self, rec: &Record, ctx: &mut Ctx<'_>) -> Result<Flow> {
        match rec {
            // Losses are always told, --count reached or not.
            Record::Lost { ts_ns, lost } => self.printer.lost_at(lost, *ts_ns)?,
            _ if self.printer.printed >= self.limit => return Ok(Flow::Stop),
            Record::Event(e) => {
                let w = ctx.source.workloads().and_then(|w| w.of_owner(e.owner));
                self.printer.event_with(e, w.as_deref())?
            }
            Record::Drop(d) => self.kernel_drop(d, &*ctx.source)?,
            Record::Listeners {
                ts_ns,
                listeners,
                counters,
            } => {
                let lines = self.drops.sample(*ts_ns, listeners, counters);
                self.drop_lines(lines)?;
            }
            Record::Snapshot { .. } | Record::Workload { .. } | Record::Stack { .. } => {}
        }
        Ok(if self.printer.printed >= self.limit {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    fn drained(&mut self, _ctx: &mut Ctx<'_>) -> Result<()> {
        self.printer.flush()?;
        Ok(())
    }

    /// Every second: the summary lines of the drops the rate limit held
    /// back in the second that ended.
    fn tick(&mut self, ctx: &mut Ctx<'_>) -> Result<Flow> {
        let lines = self.drops.due(ctx.source.clock_ns());
        if !lines.is_empty() {
            self.drop_lines(lines)?;
            self.printer.flush()?;
        }
        Ok(if self.printer.printed >= self.limit {
            Flow::Stop
        } else {
            Flow::Continue
        })
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>) -> Result<ExitCode> {
        let lines = self.drops.finish();
        self.drop_lines(lines)?;
        self.printer.flush()?;
        if self.drops.table.is_active() {
            crate::say!("{}", self.drops.summary());
        }
        let lost = ctx.lost;
        crate::say!(
            "{} events printed ({} delivered by the kernel); lost {} (ring buffer full {}, recursion misses {}, owner map full {}, probe failed {}){}",
            self.printer.printed,
            ctx.source.delivered(),
            lost.total(),
            lost.ring_full,
            lost.recursion_misses,
            lost.map_full,
            lost.probe_failed,
            if ctx.decode_errors > 0 {
                format!("; {} undecodable", ctx.decode_errors)
            } else {
                String::new()
            }
        );
        if let Some(n) = ctx.source.kernel_workload_filtered() {
            crate::say!("{n} events of other workloads dropped in the kernel");
        }
        Ok(ExitCode::SUCCESS)
    }
}

pub fn run(cfg: TraceConfig) -> Result<ExitCode> {
    let edges = Edges::install()?;
    let mut source = Live::load(&cfg.load, cfg.user_filter)?;
    let out = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut trace = Trace::new(out, cfg.json, crate::clock::measure_wall_clock(), cfg.count);
    edges.run(&mut source, &mut trace, &options(cfg.duration))
}

/// The loop's options for `trace`: a tick every second ends the drop
/// rate limit's seconds.
pub fn options(deadline: Option<std::time::Duration>) -> Options {
    Options {
        tick: Some(std::time::Duration::from_secs(1)),
        deadline,
        hangup: Hangup::Stops,
        ..Options::default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use tcptrace_core::{
        clock::WallClock,
        listeners::{DropCounters, DropReason, ListenerSample, NetnsDropCounters, SynDrop},
        model::{Comm, Family, SeenOwner, TcpState},
        record::Record,
    };

    use super::*;
    use crate::{
        session::{Input, inputs, run},
        source::{Scripted, Step, scripted::WALL_OFFSET_NS},
    };

    const SEC: u64 = 1_000_000_000;
    const START: u64 = 1_000 * SEC;
    const NS: u32 = 4026532000;

    fn at(secs: f64) -> u64 {
        START + (secs * 1e9) as u64
    }

    fn syn_to(port: u16, ts_ns: u64, reason: DropReason) -> SynDrop {
        SynDrop {
            ts_ns,
            netns: Some(NS),
            family: Family::V4,
            local: IpAddr::V4(Ipv4Addr::LOCALHOST),
            local_port: port,
            remote: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            remote_port: 41_000,
            reason,
            kernel_reason: 3,
            syn: true,
            ack: false,
            rx_state: None,
            suppressed: 0,
        }
    }

    fn sample(ts_ns: u64, drops: u64, queue: u32, overflows: u64) -> (u64, Step) {
        (
            ts_ns,
            Step::Record(Record::Listeners {
                ts_ns,
                listeners: vec![ListenerSample {
                    netns: Some(NS),
                    family: Family::V4,
                    addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    port: 8080,
                    inode: 1,
                    owner: Some(SeenOwner {
                        pid: 77,
                        comm: Comm::from_name("slowacceptd"),
                    }),
                    cgroup: None,
                    queue,
                    limit: 1,
                    drops: Some(drops),
                }],
                counters: vec![NetnsDropCounters {
                    netns: NS,
                    counters: DropCounters {
                        listen_overflows: Some(overflows),
                        listen_drops: Some(overflows),
                        req_qfull_drop: Some(0),
                        ..DropCounters::default()
                    },
                }],
            }),
        )
    }

    fn play(steps: Vec<(u64, Step)>, json: bool, count: Option<u64>) -> String {
        let clock = WallClock {
            offset_ns: WALL_OFFSET_NS as i128,
        };
        let mut trace = Trace::new(Vec::new(), json, clock, count);
        let (_tx, rx) = inputs();
        let mut source = Scripted::new(START, steps);
        run(&mut source, &mut trace, &options(None), &rx).expect("the loop runs");
        String::from_utf8(trace.printer.into_inner()).unwrap()
    }

    /// A SYN flood to a closed port (40 in 0.4 s), a listener whose queue
    /// overflows (its count and ListenOverflows grow by 37 between two
    /// samples), one ACK the kernel reported at that full queue.
    fn script() -> Vec<(u64, Step)> {
        let mut steps: Vec<(u64, Step)> = (0..40)
            .map(|i| {
                let ts = at(0.1) + i * 10_000_000;
                (
                    ts,
                    Step::Record(Record::Drop(syn_to(9, ts, DropReason::NoListener))),
                )
            })
            .collect();
        steps.push(sample(at(1.0), 3, 0, 100));
        let mut ack = syn_to(8080, at(1.5), DropReason::AcceptQueueFull);
        ack.syn = false;
        ack.ack = true;
        ack.rx_state = Some(TcpState::Listen);
        ack.kernel_reason = 40;
        steps.push((at(1.5), Step::Record(Record::Drop(ack))));
        steps.push(sample(at(2.0), 41, 2, 138));
        steps.push((at(5.0), Step::Input(Input::Stop)));
        steps
    }

    #[test]
    fn kernel_drops_are_rate_limited_with_counts_and_samples_add_the_rest() {
        let out = play(script(), true, None);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.iter().all(|l| l["event"] == "drop"), "{out}");
        let closed: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["destination"] == "127.0.0.1:9")
            .collect();
        // Five lines, then one line at the end of the second for the 35 others.
        assert_eq!(closed.len(), 6, "{out}");
        assert!(closed[..5].iter().all(|l| l["count"] == 1));
        assert_eq!(closed[5]["count"], 35);
        assert_eq!(closed[5]["reason"], "no_listener");
        assert_eq!(closed[5]["listener"], serde_json::Value::Null);
        assert_eq!(closed[5]["remote"], "127.0.0.2:41000");
        assert_eq!(closed[5]["source"], "kernel");
        assert_eq!(closed[5]["syn"], true);
        // The summary comes with the tick that ended its second (at 1 s),
        // before the first sample.
        let summary_at = lines.iter().position(|l| l["count"] == 35).unwrap();
        let first_sample = lines
            .iter()
            .position(|l| l["source"] == "sock_diag")
            .unwrap();
        assert!(summary_at < first_sample, "{out}");
        // The ACK the kernel reported names the listener and its owner.
        let ack = lines
            .iter()
            .find(|l| l["source"] == "kernel" && l["listener"] == "127.0.0.1:8080")
            .expect("the reported ACK");
        assert_eq!(ack["reason"], "accept_queue_full");
        assert_eq!(ack["ack"], true);
        assert_eq!(ack["rx_state"], "LISTEN");
        assert_eq!(ack["comm"], "slowacceptd");
        assert_eq!(ack["kernel_reason_id"], 40);
        // The sample: 38 more drops, one reported: 37 more on one line.
        let sampled: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["source"] == "sock_diag")
            .collect();
        assert_eq!(sampled.len(), 1, "{out}");
        assert_eq!(sampled[0]["listener"], "127.0.0.1:8080");
        assert_eq!(sampled[0]["netns"], NS);
        assert_eq!(sampled[0]["reason"], "accept_queue_full");
        assert_eq!(sampled[0]["count"], 37);
        assert_eq!(sampled[0]["pid"], 77);
        assert_eq!(sampled[0]["accept_queue"], 2);
        assert_eq!(sampled[0]["accept_queue_limit"], 1);
        assert_eq!(
            sampled[0]["ts_ns"],
            serde_json::json!(at(2.0) + WALL_OFFSET_NS)
        );
        let total: u64 = lines.iter().map(|l| l["count"].as_u64().unwrap()).sum();
        assert_eq!(total, 40 + 1 + 37, "every drop once");
    }

    /// A scripted source that names kernel drop reasons as the live one
    /// does.
    struct Naming(Scripted);

    impl Source for Naming {
        fn info(&self) -> crate::source::SourceInfo {
            self.0.info()
        }
        fn clock_ns(&self) -> u64 {
            self.0.clock_ns()
        }
        fn wait(&mut self, until: u64, inputs: &std::sync::mpsc::Receiver<Input>) -> Option<Input> {
            self.0.wait(until, inputs)
        }
        fn now(&self) -> (u64, u64) {
            self.0.now()
        }
        fn drain(&mut self, f: &mut dyn FnMut(Record)) {
            self.0.drain(f)
        }
        fn sockets(&mut self) -> anyhow::Result<Option<Record>> {
            self.0.sockets()
        }
        fn take_lost(&mut self) -> tcptrace_core::model::Lost {
            self.0.take_lost()
        }
        fn host(&self) -> ((u16, u16), u64) {
            self.0.host()
        }
        fn drop_reason_name(&self, kernel_id: u16) -> Option<String> {
            match kernel_id {
                3 => Some("NO_SOCKET".into()),
                40 => Some("TCP_LISTEN_OVERFLOW".into()),
                _ => None,
            }
        }
    }

    #[test]
    fn kernel_reasons_are_named_by_the_source() {
        let clock = WallClock {
            offset_ns: WALL_OFFSET_NS as i128,
        };
        let mut trace = Trace::new(Vec::new(), true, clock, None);
        let (_tx, rx) = inputs();
        let mut source = Naming(Scripted::new(START, script()));
        run(&mut source, &mut trace, &options(None), &rx).expect("the loop runs");
        let out = String::from_utf8(trace.printer.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for l in lines.iter().filter(|l| l["source"] == "kernel") {
            let want = if l["reason"] == "no_listener" {
                "NO_SOCKET"
            } else {
                "TCP_LISTEN_OVERFLOW"
            };
            assert_eq!(l["kernel_reason"], want, "{l}");
        }
        assert!(
            lines
                .iter()
                .filter(|l| l["source"] == "sock_diag")
                .all(|l| l.get("kernel_reason").is_none())
        );
        // In text, in brackets.
        let mut trace = Trace::new(Vec::new(), false, clock, None);
        let mut source = Naming(Scripted::new(START, script()));
        run(&mut source, &mut trace, &options(None), &rx).expect("the loop runs");
        let out = String::from_utf8(trace.printer.into_inner()).unwrap();
        assert!(
            out.contains("DROP accept queue full [TCP_LISTEN_OVERFLOW] ACK"),
            "{out}"
        );
    }

    #[test]
    fn drop_lines_in_text_and_under_count() {
        let out = play(script(), false, None);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], tcptrace_core::output::text::HEADER);
        assert!(
            lines
                .iter()
                .any(|l| l.contains("127.0.0.1:9 ")
                    && l.contains("DROP no listener (reset) SYN x35")),
            "{out}"
        );
        assert!(
            lines.iter().any(|l| l.contains("slowacceptd")
                && l.contains("DROP accept queue full x37 (sock_diag, queue 2/1)")),
            "{out}"
        );
        // --count 3: three lines, then the loop stops.
        let out = play(script(), true, Some(3));
        assert_eq!(out.lines().count(), 3, "{out}");
    }
}
