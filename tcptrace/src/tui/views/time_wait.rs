//! TIME_WAIT: by peer (and local endpoint), with the share of the ephemeral port range each uses.

use std::net::SocketAddr;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Paragraph, Row, Widget},
};

use super::super::{screen::Screen, theme::*, widgets::*};

impl Screen<'_> {
    pub(in crate::tui) fn render_time_wait(&self, area: Rect, buf: &mut Buffer) {
        let d = self.data.as_ref().expect("checked by caller");
        let [list, summary] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(area);
        // (the summary: a rule and two lines)
        let peers = &d.tw_peers;
        let total: u64 = peers.iter().map(|p| p.count).sum();
        let (lo, hi) = d.snap.port_range;
        let block = titled_with(
            " TIME_WAIT by remote endpoint ",
            format!(
                "({total}; ephemeral ports {lo}-{hi}; sort: {}) ",
                self.time_wait_sort.name()
            ),
        );
        let rows = &self.time_wait.rows;
        window_table(
            list,
            buf,
            block,
            &[
                "REMOTE",
                "COUNT",
                "PORTS",
                "p50",
                "p99",
                "max",
                "CLOSED FIRST",
            ],
            &[
                Constraint::Min(21),
                Constraint::Length(7),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(16),
            ],
            rows.len(),
            Some(self.time_wait.selected),
            |i| {
                let p = &peers[rows[i]];
                let pct = p.port_range_ratio * 100.0;
                let ports = Cell::from(format!("{pct:.1}%"));
                let ports = if pct >= 50.0 {
                    ports.fg(BAD).bold()
                } else if pct >= 10.0 {
                    ports.fg(WARN)
                } else {
                    ports
                };
                let h = |f: fn(&tcptrace_core::stats::HistSummary) -> f64| {
                    p.duration.map_or("-".into(), |s| fmt_ms(f(&s)))
                };
                let closed = if p.closed_both == 0 && p.closed_unknown == 0 {
                    "local".to_string()
                } else if p.closed_local == 0 && p.closed_unknown == 0 {
                    "both (simult.)".to_string()
                } else {
                    format!(
                        "local {} both {}{}",
                        p.closed_local,
                        p.closed_both,
                        if p.closed_unknown > 0 { " ?" } else { "" }
                    )
                };
                Row::new(vec![
                    Cell::from(SocketAddr::new(p.daddr, p.dport).to_string()),
                    Cell::from(p.count.to_string()).bold(),
                    ports,
                    Cell::from(h(|s| s.p50_ms)),
                    Cell::from(h(|s| s.p99_ms)),
                    Cell::from(h(|s| s.max_ms)),
                    Cell::from(closed),
                ])
            },
        );
        let closers = &d.snap.closers;
        let c = |k: &str| closers.get(k).copied().unwrap_or(0);
        let locals: Vec<String> = d
            .snap
            .time_wait_by_local
            .iter()
            .take(3)
            .map(|l| format!("{} {}", SocketAddr::new(l.saddr, l.sport), l.count))
            .collect();
        let tw_overflow = d.snap.tw_overflow;
        let lines = vec![
            Line::from(vec![
                Span::raw(" closed first, ended connections: ").fg(DIM),
                Span::raw(format!(
                    "we did {}  peer did {}  both {}",
                    c("active"),
                    c("passive"),
                    c("simultaneous")
                )),
            ]),
            Line::from(vec![
                Span::raw(" TCPTimeWaitOverflow ").fg(DIM),
                if tw_overflow > 0 {
                    Span::raw(tw_overflow.to_string()).fg(BAD).bold()
                } else {
                    Span::raw("0")
                },
                Span::raw("  by local endpoint: ").fg(DIM),
                Span::raw(if locals.is_empty() {
                    "none".into()
                } else {
                    locals.join("  ")
                }),
            ]),
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
