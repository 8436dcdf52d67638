//! Listeners: every listening socket with its accept queue (depth over
//! limit, with a bar) and the connection attempts dropped at it — SYNs and
//! handshake ACKs no state transition shows — per second by the kernel's
//! reason, most dropping first. Below, the selected listener in full and
//! what no listener explains (drops the kernel reported at ports nobody
//! listens on). Columns are added from the right as the terminal widens:
//! the namespace at 100 columns, the reasons at 120, the workload at 160.

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Widget, Wrap},
};
use tcptrace_core::{
    listeners::{DropReason, ListenerRow},
    output::escape,
    stats::ListenDrops,
};

use super::super::{screen::Screen, theme::*, widgets::*};

/// Cells of the accept queue's bar.
const BAR: usize = 7;

fn owner(r: &ListenerRow) -> String {
    match (r.pid, r.comm.as_deref()) {
        // Process names are the process's to choose: escaped.
        (Some(pid), Some(comm)) => format!("{pid} {}", escape(comm)),
        (Some(pid), None) => pid.to_string(),
        _ => "?".into(),
    }
}

/// A reason's words for a snake_case name from a row.
fn label(name: &str) -> &str {
    DropReason::parse(name).map_or(name, |r| r.label())
}

/// The queue's fill, 0..=1 (a limit of 0: not known, shown empty).
fn fill(r: &ListenerRow) -> f64 {
    if r.accept_queue_limit == 0 {
        return 0.0;
    }
    (f64::from(r.accept_queue) / f64::from(r.accept_queue_limit)).min(1.0)
}

fn fill_style(r: &ListenerRow) -> Style {
    let f = fill(r);
    if r.accept_queue_limit > 0 && r.accept_queue >= r.accept_queue_limit {
        Style::default().fg(BAD).bold()
    } else if f >= 0.5 {
        Style::default().fg(WARN)
    } else {
        Style::default().fg(GOOD)
    }
}

/// "128/128 ███████": depth over limit and a bar of the fill (one cell at
/// least when anything waits).
fn queue_cell(r: &ListenerRow) -> Line<'static> {
    let f = fill(r);
    let mut cells = (f * BAR as f64).round() as usize;
    if r.accept_queue > 0 {
        cells = cells.max(1);
    }
    let style = fill_style(r);
    Line::from(vec![
        Span::styled(
            format!(
                "{:>9} ",
                format!("{}/{}", r.accept_queue, r.accept_queue_limit)
            ),
            if r.accept_queue > 0 {
                style
            } else {
                Style::default()
            },
        ),
        Span::styled("█".repeat(cells), style),
        Span::styled("·".repeat(BAR - cells), Style::default().fg(DIM)),
    ])
}

/// Drops per second by reason now, by the reasons' JSON names (short:
/// "accept_queue_full 12.0/s"); when none now, the totals by reason
/// ("paws 14 total"); "-" when the listener never dropped.
pub fn reasons(r: &ListenerRow) -> String {
    if !r.drops_per_sec_by_reason.is_empty() {
        let mut now: Vec<(&str, f64)> = r
            .drops_per_sec_by_reason
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        now.sort_by(|a, b| b.1.total_cmp(&a.1));
        return now
            .iter()
            .map(|(k, v)| format!("{k} {v:.1}/s"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    if r.drops_by_reason.is_empty() {
        return "-".into();
    }
    let mut all: Vec<(&str, u64)> = r.drops_by_reason.iter().map(|(k, v)| (*k, *v)).collect();
    all.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let text = all
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("{text} total")
}

/// How long ago, in at most 9 characters: "100ms ago", "12.3s ago",
/// "1m15s ago".
fn ago(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms ago")
    } else {
        format!("{} ago", fmt_ms(ms as f64))
    }
}

fn rate_cell(per_sec: f64) -> Cell<'static> {
    if per_sec > 0.0 {
        Cell::from(format!("{per_sec:.1}")).fg(BAD).bold()
    } else {
        Cell::from("0").fg(DIM)
    }
}

/// What the view says when there is nothing to list.
fn empty_lines(drops: Option<&ListenDrops>, filtered: bool) -> Vec<Line<'static>> {
    if drops.is_none() {
        return vec![
            Line::from(""),
            Line::from("No listener data yet.").bold(),
            Line::from(""),
            Line::from(
                "Every listening socket will appear here: its accept queue (connections \
                 waiting for accept() and the limit, min(listen() backlog, \
                 net.core.somaxconn), sampled from sock_diag about once a second), its \
                 owner and workload, and the SYNs and handshake ACKs dropped at it per \
                 second by the kernel's reason (accept queue full, SYN queue full, \
                 PAWS/timestamp rejects...), the listeners dropping most first.",
            ),
            Line::from(""),
            Line::from("A recording made without listener samples (an older tcptrace) has none.")
                .fg(DIM),
        ];
    }
    let text = if filtered {
        "no listener matches the filter (Esc clears it)"
    } else {
        "no listening sockets in the traced namespaces"
    };
    vec![Line::from(""), Line::from(text).fg(DIM)]
}

impl Screen<'_> {
    pub(in crate::tui) fn render_listeners(&self, area: Rect, buf: &mut Buffer) {
        let d = self.data.as_ref().expect("checked by caller");
        // Both absent when no listener data came (the snapshot's
        // `listeners` and `listen_drops`).
        let drops = d.snap.listen_drops.as_ref();
        let all = d.listeners();
        // The rows shown, in the app's order (indices from the same
        // refresh; one out of range is skipped, never a panic).
        let rows: Vec<&ListenerRow> = self
            .listeners
            .rows
            .iter()
            .filter_map(|&i| all.get(i))
            .collect();
        let dropping = rows.iter().filter(|r| r.drops_per_sec > 0.0).count();
        let block = titled_with(
            " Listeners ",
            format!(
                "({}; {dropping} dropping now; sort: {}) ",
                rows.len(),
                self.listener_sort.name()
            ),
        );
        if rows.is_empty() {
            let inner = block.inner(area);
            block.render(area, buf);
            // A column of margin on each side, wrapped lines included.
            let text = Rect {
                x: inner.x + 1,
                width: inner.width.saturating_sub(2),
                ..inner
            };
            Paragraph::new(empty_lines(drops, !self.filter.is_empty()))
                .wrap(Wrap { trim: false })
                .render(text, buf);
            return;
        }
        let (list, summary) = if area.height >= 12 {
            let [list, summary] =
                Layout::vertical([Constraint::Min(3), Constraint::Length(5)]).areas(area);
            (list, Some(summary))
        } else {
            (area, None)
        };
        let w = list.width;
        let with_netns = w >= 100;
        let with_reasons = w >= 120;
        let with_workload = w >= 160;
        // Fixed columns and their gaps: owner 16, queue 17, drops/s 7,
        // total 6, last drop 9, (netns 10, reasons at least 24, workload
        // 20); the listener gets what they leave, up to its longest name
        // (an IPv6 address and port: at most 47), and the reasons the rest.
        let fixed = 16
            + 17
            + 7
            + 6
            + 9
            + 5
            + if with_netns { 11 } else { 0 }
            + if with_reasons { 25 } else { 0 }
            + if with_workload { 21 } else { 0 };
        let longest = rows
            .iter()
            .map(|r| r.listener.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(14, 47) as u16;
        let name_width = longest.min(w.saturating_sub(fixed).max(14));
        let mut header = vec!["LISTENER"];
        let mut widths = vec![Constraint::Length(name_width)];
        if with_netns {
            header.push("NETNS");
            widths.push(Constraint::Length(10));
        }
        header.push("OWNER");
        widths.push(Constraint::Min(16));
        if with_workload {
            header.push("WORKLOAD");
            widths.push(Constraint::Length(20));
        }
        header.extend(["ACCEPT QUEUE", "DROPS/s", "TOTAL", "LAST DROP"]);
        widths.extend([
            Constraint::Length(17),
            Constraint::Length(7),
            Constraint::Length(6),
            Constraint::Length(9),
        ]);
        if with_reasons {
            header.push("DROPS/s BY REASON");
            widths.push(Constraint::Min(24));
        }
        window_table(
            list,
            buf,
            block,
            &header,
            &widths,
            rows.len(),
            Some(self.listeners.selected),
            |i| {
                let r = rows[i];
                let mut cells = vec![Cell::from(fit_middle(&r.listener, usize::from(name_width)))];
                if with_netns {
                    cells.push(Cell::from(r.netns.map_or("-".into(), |n| n.to_string())));
                }
                cells.push(match r.closed_age_ms {
                    Some(ms) => Cell::from(format!("closed {} ago", fmt_ms(ms as f64))).fg(DIM),
                    None => Cell::from(owner(r)),
                });
                if with_workload {
                    cells.push(Cell::from(
                        r.workload
                            .workload
                            .as_deref()
                            .map_or_else(|| "-".into(), |w| escape(w).into_owned()),
                    ));
                }
                cells.extend([
                    Cell::from(queue_cell(r)),
                    rate_cell(r.drops_per_sec),
                    if r.drops_total > 0 {
                        Cell::from(fmt_count(r.drops_total as f64)).bold()
                    } else {
                        Cell::from("0").fg(DIM)
                    },
                    Cell::from(r.last_drop_age_ms.map_or("-".into(), ago)),
                ]);
                if with_reasons {
                    cells.push(Cell::from(reasons(r)));
                }
                Row::new(cells)
            },
        );
        if let Some(summary) = summary {
            let selected = rows.get(self.listeners.selected).copied();
            Paragraph::new(summary_lines(selected, drops))
                .block(
                    Block::default()
                        .borders(Borders::TOP)
                        .border_style(Style::default().fg(DIM)),
                )
                .render(summary, buf);
        }
    }
}

/// The selected listener in full (three lines), then what no listener
/// explains.
fn summary_lines(r: Option<&ListenerRow>, drops: Option<&ListenDrops>) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    if let Some(r) = r {
        let mut head = vec![
            Span::raw(format!(" {}", r.listener)).bold(),
            Span::raw(format!(
                "  netns {}  ",
                r.netns.map_or("?".into(), |n| n.to_string())
            ))
            .fg(DIM),
            Span::raw(owner(r)),
        ];
        if let Some(w) = &r.workload.workload {
            head.push(Span::raw(format!(
                "  {} ({})",
                escape(w),
                r.workload.workload_kind.unwrap_or("workload")
            )));
        }
        lines.push(Line::from(head));
        let mut dropped = vec![Span::raw(" dropped: ").fg(DIM)];
        if r.drops_by_reason.is_empty() {
            dropped.push(Span::raw("none since tracing began").fg(GOOD));
        } else {
            let mut all: Vec<(&str, u64)> =
                r.drops_by_reason.iter().map(|(k, v)| (*k, *v)).collect();
            all.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
            let parts: Vec<String> = all
                .iter()
                .map(|(k, n)| {
                    let rate = r.drops_per_sec_by_reason.get(k).copied().unwrap_or(0.0);
                    format!("{} {n} ({rate:.1}/s)", label(k))
                })
                .collect();
            dropped.push(Span::raw(parts.join(", ")).fg(BAD));
        }
        lines.push(Line::from(dropped));
        let full = r.accept_queue_limit > 0 && r.accept_queue >= r.accept_queue_limit;
        lines.push(Line::from(vec![
            Span::raw(" accept queue: ").fg(DIM),
            Span::styled(
                format!("{} of {}", r.accept_queue, r.accept_queue_limit),
                fill_style(r),
            ),
            Span::raw(format!(" (peak {})", r.accept_queue_peak)),
            Span::raw(if full {
                "  full: not accept()ing fast enough, or the backlog is too small"
            } else {
                "  limit = min(listen() backlog, net.core.somaxconn)"
            })
            .fg(if full { WARN } else { DIM }),
        ]));
    } else {
        lines.extend([Line::from(""), Line::from(""), Line::from("")]);
    }
    let Some(l) = drops else {
        return lines;
    };
    let mut other = vec![
        Span::raw(" kernel-reported drops ").fg(DIM),
        Span::raw(l.kernel_reported.to_string()),
    ];
    if l.kernel_suppressed > 0 {
        other.push(Span::raw(format!(
            " (+{} not one by one)",
            l.kernel_suppressed
        )));
    }
    if let Some(u) = l.unmatched.first() {
        other.push(Span::raw("  no listener: ").fg(DIM));
        other.push(Span::raw(format!("{} {}", u.destination, u.drops_total)));
        if l.unmatched.len() > 1 {
            other.push(Span::raw(format!(" (+{} more)", l.unmatched.len() - 1)).fg(DIM));
        }
    }
    let unattributed = l
        .namespaces
        .iter()
        .fold(0u64, |a, n| a.saturating_add(n.unattributed));
    if unattributed > 0 {
        other.push(Span::raw("  ListenDrops of closed listeners ").fg(DIM));
        other.push(Span::raw(unattributed.to_string()));
    }
    lines.push(Line::from(other));
    lines
}
