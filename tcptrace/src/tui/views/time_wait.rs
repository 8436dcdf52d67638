//! TIME_WAIT by the side that matters: one row per local service whose
//! server closes first (accepted connections: every client port differs,
//! so per-client rows would be hundreds of "1"), one per destination this
//! host connects to and closes first (ephemeral ports: the share of the
//! fullest port budget). Columns drop from the right on narrow terminals.

use std::net::SocketAddr;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Widget},
};
use tcptrace_core::app::data::{TwGroup, TwSide};

use super::super::{screen::Screen, theme::*, widgets::*};

/// "server 98%": who closed first on most of the group's ended
/// connections; with none ended yet, the side holding the TIME_WAIT (it
/// closed first, by definition).
pub fn closes_first(g: &TwGroup) -> String {
    let c = g.closed_first;
    let (here, there) = match g.side {
        TwSide::Service => ("server", "client"),
        TwSide::Destination => ("here", "peer"),
    };
    let total = c.total();
    if total == 0 {
        return here.to_string();
    }
    let (name, n) = [(here, c.local), (there, c.remote), ("both", c.both)]
        .into_iter()
        .max_by_key(|&(_, n)| n)
        .expect("three");
    format!("{name} {:.0}%", n as f64 * 100.0 / total as f64)
}

/// "svc 10.0.0.1:8080" or "to 10.0.0.9:80"; a service also on the same
/// ip:port in another network namespace: "svc 10.0.0.1:8080 ns 4026532001".
pub fn where_(g: &TwGroup) -> String {
    let tag = match g.side {
        TwSide::Service => "svc",
        TwSide::Destination => "to",
    };
    let at = SocketAddr::new(g.addr, g.port);
    match g.netns {
        Some(ns) if g.netns_shown => format!("{tag} {at} ns {ns}"),
        _ => format!("{tag} {at}"),
    }
}

fn owner(g: &TwGroup) -> String {
    match (g.pid, g.comm.as_deref()) {
        (Some(pid), Some(comm)) => format!("{pid} {comm}"),
        (Some(pid), None) => pid.to_string(),
        _ => "?".into(),
    }
}

impl Screen<'_> {
    pub(in crate::tui) fn render_time_wait(&self, area: Rect, buf: &mut Buffer) {
        let d = self.data.as_ref().expect("checked by caller");
        let [list, summary] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(5)]).areas(area);
        // (the summary: a rule and four short lines, the numbers that
        // matter first, so 80 columns cut nothing but an address's tail)
        if self.by_workload {
            let all = &d.snap.time_wait_by_workload;
            let rows: Vec<_> = self
                .time_wait_workloads
                .iter()
                .filter_map(|&i| all.get(i))
                .collect();
            let total: u64 = rows.iter().map(|w| w.count).sum();
            let block = titled_with(
                " TIME_WAIT by workload ",
                format!("({total}; w: by service and destination) "),
            );
            window_table(
                list,
                buf,
                block,
                &["WORKLOAD", "KIND", "TIME_WAIT"],
                &[
                    Constraint::Min(32),
                    Constraint::Length(10),
                    Constraint::Length(10),
                ],
                rows.len(),
                None,
                |i| {
                    let w = &rows[i];
                    Row::new(vec![
                        Cell::from(tcptrace_core::output::text::cut_middle(&w.workload, 48)),
                        Cell::from(w.workload_kind),
                        Cell::from(w.count.to_string()),
                    ])
                },
            );
            let _ = summary; // the per-service summary belongs to the other grouping
            return;
        }
        let groups = &d.tw_groups;
        let total: u64 = groups.iter().map(|g| g.count).sum();
        let block = titled_with(
            " TIME_WAIT by service and destination ",
            format!("({total}; sort: {}) ", self.time_wait_sort.name()),
        );
        let rows = &self.time_wait.rows;
        // Narrow terminals keep the essentials: where, owner, count, rate,
        // ports, who closes first; wider ones add the durations.
        let wide = area.width >= 110;
        let mut header = vec!["WHERE", "OWNER", "COUNT", "RATE/s", "PORTS", "CLOSES FIRST"];
        // As wide as the longest address (an IPv6 one is at most 47
        // characters); owners get the rest.
        let where_width = rows
            .iter()
            .map(|&i| where_(&groups[i]).len())
            .max()
            .unwrap_or(0)
            .clamp(22, 48) as u16;
        // Never wider than what the other columns leave (borders 2, owner
        // at least 14, the rest 32, gaps 5).
        let where_width = where_width.min(list.width.saturating_sub(2 + 14 + 32 + 5).max(22));
        let mut widths = vec![
            Constraint::Length(where_width),
            Constraint::Min(14),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(12),
        ];
        if wide {
            header.extend(["p50", "p99", "max"]);
            widths.extend([Constraint::Length(6); 3]);
        }
        window_table(
            list,
            buf,
            block,
            &header,
            &widths,
            rows.len(),
            Some(self.time_wait.selected),
            |i| {
                let g = &groups[rows[i]];
                let ports = match g.port_share {
                    Some(share) => {
                        let pct = share * 100.0;
                        let cell = Cell::from(format!("{pct:.1}%"));
                        if pct >= 50.0 {
                            cell.fg(BAD).bold()
                        } else if pct >= 10.0 {
                            cell.fg(WARN)
                        } else {
                            cell
                        }
                    }
                    None => Cell::from("-").fg(DIM),
                };
                let mut cells = vec![
                    Cell::from(fit_middle(&where_(g), usize::from(where_width))),
                    Cell::from(owner(g)),
                    Cell::from(fmt_count(g.count as f64)).bold(),
                    Cell::from(format!("{:.1}", g.rate_per_sec)),
                    ports,
                    Cell::from(closes_first(g)),
                ];
                if wide {
                    let h = |f: fn(&tcptrace_core::stats::HistSummary) -> f64| {
                        g.duration.map_or("-".into(), |s| fmt_ms(f(&s)))
                    };
                    cells.extend([
                        Cell::from(h(|s| s.p50_ms)),
                        Cell::from(h(|s| s.p99_ms)),
                        Cell::from(h(|s| s.max_ms)),
                    ]);
                }
                Row::new(cells)
            },
        );
        let closers = &d.snap.closers;
        let c = |k: &str| closers.get(k).copied().unwrap_or(0);
        let tw_overflow = d.snap.tw_overflow;
        let ended = &d.snap.ended;
        let e = |k: &str| ended.get(k).copied().unwrap_or(0);
        let alarm = |n: u64| {
            if n > 0 {
                Span::raw(n.to_string()).fg(BAD).bold()
            } else {
                Span::raw("0")
            }
        };
        let budget = match d.snap.port_budgets.first() {
            Some(b) => vec![
                Span::raw(" fullest port budget: ").fg(DIM),
                Span::raw(format!("{:.1}%", b.in_use_ratio * 100.0)).bold(),
                Span::raw(format!(
                    " of {} ports, {} -> {}",
                    b.ports,
                    b.saddr,
                    SocketAddr::new(b.daddr, b.dport)
                )),
            ],
            None => vec![
                Span::raw(" fullest port budget: ").fg(DIM),
                Span::raw("none"),
            ],
        };
        let lines = vec![
            Line::from(vec![
                Span::raw(" never made (overflow): ").fg(DIM),
                alarm(e("time_wait_overflow")),
                Span::raw("  TCPTimeWaitOverflow (host): ").fg(DIM),
                alarm(tw_overflow),
            ]),
            Line::from(vec![
                Span::raw(" ended: ").fg(DIM),
                Span::raw(format!(
                    "expired {}  reused {}  killed {}  purged {}",
                    e("time_wait_expired"),
                    e("time_wait_reused"),
                    e("time_wait_killed"),
                    e("time_wait_purged")
                )),
            ]),
            Line::from(vec![
                Span::raw(" closed first, ended connections: ").fg(DIM),
                Span::raw(format!(
                    "here {}  peer {}  both {}",
                    c("active"),
                    c("passive"),
                    c("simultaneous")
                )),
            ]),
            Line::from(budget),
        ];
        Paragraph::new(lines)
            .block(
                Block::default()
                    .borders(Borders::TOP)
                    .border_style(Style::default().fg(DIM)),
            )
            .render(summary, buf);
    }
}
