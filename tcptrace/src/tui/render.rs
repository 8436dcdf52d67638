//! Drawing `tcptrace top`: `impl Widget for &App`, a pure function of the app
//! state. Every list draws only its visible rows, so a frame costs the same
//! with ten sockets or a million.

use std::net::SocketAddr;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, Tabs, Widget, Wrap},
};

use crate::clock::hms_millis;
use tcptrace_core::{
    app::{
        App, HistKey, View,
        data::{ConnRow, PANEL_STATES, PlaybackStatus},
    },
    model::TcpState,
    stats::HistKind,
};

/// Smallest screen drawn; below it a one-line notice.
const MIN_SIZE: (u16, u16) = (40, 12);

const ACCENT: Color = Color::Cyan;
const WARN: Color = Color::Yellow;
const BAD: Color = Color::Red;
const GOOD: Color = Color::Green;
const DIM: Color = Color::DarkGray;

fn selected_style() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

pub use crate::clock::{fmt_age, fmt_ms};

fn header_style() -> Style {
    Style::default().fg(ACCENT).add_modifier(Modifier::BOLD)
}

/// A count for a narrow column: 999, 12.3k, 4.5M.
pub fn fmt_count(n: f64) -> String {
    if n < 10_000.0 {
        format!("{n:.0}")
    } else if n < 10_000_000.0 {
        format!("{:.1}k", n / 1000.0)
    } else {
        format!("{:.1}M", n / 1e6)
    }
}

fn short_state(s: TcpState) -> &'static str {
    match s {
        TcpState::Established => "ESTAB",
        TcpState::SynSent => "SYN_S",
        TcpState::SynRecv => "SYN_R",
        TcpState::FinWait1 => "FW1",
        TcpState::FinWait2 => "FW2",
        TcpState::TimeWait => "TW",
        TcpState::CloseWait => "CW",
        TcpState::LastAck => "LA",
        TcpState::Closing => "CLOSING",
        other => other.name(),
    }
}

fn state_color(s: TcpState) -> Color {
    match s {
        TcpState::CloseWait => BAD,
        TcpState::TimeWait => WARN,
        TcpState::Established => GOOD,
        TcpState::SynSent | TcpState::SynRecv => ACCENT,
        _ => Color::Magenta,
    }
}

fn hist_label(k: HistKind) -> &'static str {
    match k {
        HistKind::HandshakeConnect => "handshake out",
        HistKind::HandshakeAccept => "handshake in",
        HistKind::Lifetime => "lifetime",
        HistKind::Established => "ESTABLISHED",
        HistKind::CloseWait => "CLOSE_WAIT",
        HistKind::FinWait1 => "FIN_WAIT1",
        HistKind::FinWait2 => "FIN_WAIT2",
        HistKind::LastAck => "LAST_ACK",
        HistKind::TimeWait => "TIME_WAIT",
    }
}

/// The first row shown so that `selected` is visible: whole pages, so rows
/// do not shift under the cursor.
fn page_offset(selected: usize, visible: usize) -> usize {
    selected
        .checked_div(visible)
        .map_or(0, |page| page * visible)
}

fn titled(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::default()
        .borders(Borders::TOP)
        .title(title.into())
        .border_style(Style::default().fg(DIM))
}

/// A title in bold with its details dimmed: ` NAME (details) `.
fn titled_with(name: impl Into<String>, details: String) -> Block<'static> {
    titled(Line::from(vec![
        Span::raw(name.into()).bold(),
        Span::raw(details).fg(DIM),
    ]))
}

/// A table of the rows `make(i)` for `i` in the visible window of `len`
/// rows around `selected`.
#[allow(clippy::too_many_arguments)]
fn window_table<'a>(
    area: Rect,
    buf: &mut Buffer,
    block: Block<'a>,
    header: &[&'a str],
    widths: &[Constraint],
    len: usize,
    selected: Option<usize>,
    make: impl Fn(usize) -> Row<'a>,
) {
    let inner = block.inner(area);
    let visible = inner.height.saturating_sub(1) as usize;
    let offset = page_offset(selected.unwrap_or(0), visible);
    let rows: Vec<Row<'a>> = (offset..len.min(offset + visible))
        .map(|i| {
            let row = make(i);
            if Some(i) == selected {
                row.style(selected_style())
            } else {
                row
            }
        })
        .collect();
    Table::new(rows, widths.to_vec())
        .header(Row::new(header.to_vec()).style(header_style()))
        .column_spacing(1)
        .block(block)
        .render(area, buf);
}

/// `top`'s screen: a pure function of [`App`] (the state lives in the core;
/// this newtype is where ratatui meets it).
#[derive(Clone, Copy)]
pub struct Screen<'a>(pub &'a App);

impl std::ops::Deref for Screen<'_> {
    type Target = App;

    fn deref(&self) -> &App {
        self.0
    }
}

impl Widget for Screen<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
            Paragraph::new(format!(
                "terminal too small: {}x{}, need {}x{}",
                area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
            ))
            .wrap(Wrap { trim: true })
            .render(area, buf);
            return;
        }
        let [header, tabs, states, body, alerts, footer] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Min(4),
            Constraint::Length(1),
            Constraint::Length(1),
        ])
        .areas(area);
        self.render_header(header, buf);
        self.render_tabs(tabs, buf);
        self.render_state_strip(states, buf);
        match &self.data {
            None => Paragraph::new(vec![
                Line::from(""),
                Line::from("  collecting: waiting for the first refresh...").fg(DIM),
            ])
            .render(body, buf),
            Some(_) => match self.view {
                View::Overview => self.render_overview(body, buf),
                View::CloseWait => self.render_close_wait(body, buf),
                View::TimeWait => self.render_time_wait(body, buf),
                View::Connections => self.render_connections(body, buf),
                View::Histograms => self.render_histograms(body, buf),
            },
        }
        self.render_alerts(alerts, buf);
        self.render_footer(footer, buf);
        if self.help {
            render_help(
                body,
                buf,
                self.meta.source.is_some().then_some(self.meta.step_ms),
            );
        } else if self.view == View::Connections && self.conn_detail {
            self.render_conn_detail(body, buf);
        }
    }
}

impl Screen<'_> {
    fn render_header(&self, area: Rect, buf: &mut Buffer) {
        let sep = || Span::raw("  ").fg(DIM);
        let mut spans = vec![
            Span::raw(" tcptrace ").bold().fg(Color::Black).bg(ACCENT),
            Span::raw(" "),
            Span::raw(self.meta.host.clone()).bold(),
        ];
        if self.paused {
            spans.push(sep());
            spans.push(Span::raw(" PAUSED ").bold().fg(Color::Black).bg(WARN));
        }
        if let Some(src) = &self.meta.source {
            spans.push(sep());
            spans.push(Span::raw(format!("replay {src}")).fg(WARN));
            if let Some(p) = self.data.as_ref().and_then(|d| d.playback) {
                spans.push(sep());
                spans.extend(playback_spans(&p));
            }
        }
        if let Some(d) = &self.data {
            let lost = d.snap.lost.values().fold(0u64, |a, n| a.saturating_add(*n));
            // A replay shows its position instead.
            if self.meta.source.is_none() {
                spans.push(sep());
                spans.push(Span::raw(format!("up {}", fmt_ms(d.uptime_ms as f64))));
            }
            spans.push(sep());
            spans.push(Span::raw(format!("{} ev/s", fmt_count(d.events_per_sec))));
            spans.push(sep());
            if lost == 0 {
                spans.push(Span::raw("lost 0").fg(GOOD));
            } else {
                let parts: Vec<String> = d
                    .snap
                    .lost
                    .iter()
                    .filter(|(_, n)| **n > 0)
                    .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
                    .collect();
                spans.push(
                    Span::raw(format!("LOST {}", parts.join(", ")))
                        .bold()
                        .fg(BAD),
                );
            }
        }
        spans.push(sep());
        spans.push(Span::raw(format!("{}+{}", self.meta.hook, self.meta.timewait_hook)).fg(DIM));
        spans.push(sep());
        spans.push(Span::raw(format!("kernel {}", self.meta.kernel)).fg(DIM));
        Line::from(spans).render(area, buf);
    }

    fn render_tabs(&self, area: Rect, buf: &mut Buffer) {
        // Short names when the full ones would not fit.
        let short = area.width < 76;
        let titles = View::ALL.iter().enumerate().map(|(i, v)| {
            let name = match (short, v) {
                (true, View::CloseWait) => "CW",
                (true, View::TimeWait) => "TW",
                (true, View::Connections) => "Conns",
                (true, View::Histograms) => "Hist",
                _ => v.title(),
            };
            format!("{} {name}", i + 1)
        });
        Tabs::new(titles)
            .select(View::ALL.iter().position(|v| *v == self.view))
            .highlight_style(Style::default().fg(ACCENT).bold().reversed())
            .divider(Span::raw("|").fg(DIM))
            .padding(" ", " ")
            .render(area, buf);
    }

    fn render_state_strip(&self, area: Rect, buf: &mut Buffer) {
        let Some(d) = &self.data else {
            return;
        };
        let mut spans = vec![Span::raw(" ")];
        for s in PANEL_STATES {
            let n = d.snap.states.get(s.name()).copied().unwrap_or(0);
            let style = if n > 0 && matches!(s, TcpState::CloseWait | TcpState::TimeWait) {
                Style::default().fg(state_color(s)).bold()
            } else if n > 0 {
                Style::default()
            } else {
                Style::default().fg(DIM)
            };
            spans.push(Span::styled(
                format!("{} {} ", short_state(s), fmt_count(n as f64)),
                style,
            ));
        }
        Line::from(spans).render(area, buf);
    }

    fn render_overview(&self, area: Rect, buf: &mut Buffer) {
        let d = self.data.as_ref().expect("checked by caller");
        let panel_height = (PANEL_STATES.len() as u16 + 2).min(area.height);
        let [panel, rest] =
            Layout::vertical([Constraint::Length(panel_height), Constraint::Min(0)]).areas(area);
        let span_s = d.history.samples.len() as u64 * self.meta.interval_ms / 1000;
        let block = titled_with(
            " States ",
            format!("(last {}) ", fmt_ms(span_s as f64 * 1000.0)),
        );
        let inner = block.inner(panel);
        block.render(panel, buf);
        let label_w = 24u16;
        let spark_w = inner.width.saturating_sub(label_w + 1) as usize;
        let mut lines: Vec<(String, Style, Vec<u64>)> = PANEL_STATES
            .iter()
            .map(|&s| {
                let n = d.snap.states.get(s.name()).copied().unwrap_or(0);
                let style = if n == 0 {
                    Style::default().fg(DIM)
                } else {
                    Style::default().fg(state_color(s))
                };
                (
                    format!(" {:<14}{:>9}", s.name(), n),
                    style,
                    d.history.series(s, spark_w),
                )
            })
            .collect();
        lines.push((
            format!(
                " {:<14}{:>9}",
                "transitions/s",
                fmt_count(d.snap.transitions_per_sec)
            ),
            Style::default().bold(),
            d.history.rate_series(spark_w),
        ));
        for (i, (label, style, series)) in lines.into_iter().enumerate() {
            if i as u16 >= inner.height {
                break;
            }
            let row = Rect {
                y: inner.y + i as u16,
                height: 1,
                ..inner
            };
            let [l, r] =
                Layout::horizontal([Constraint::Length(label_w), Constraint::Min(0)]).areas(row);
            Span::styled(label, style).render(l, buf);
            Sparkline::default()
                .data(series)
                .style(style.remove_modifier(Modifier::BOLD))
                .render(r, buf);
        }
        if rest.height < 2 {
            return;
        }
        let [left, right] =
            Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
                .areas(rest);
        let mut cw: Vec<Line> = vec![];
        for &i in self
            .close_wait
            .rows
            .iter()
            .take(rest.height.saturating_sub(1) as usize)
        {
            let p = &d.snap.close_wait_by_process[i];
            cw.push(Line::from(format!(
                " {:>6} {:<12} {:>6} {:>+7.1}/m",
                p.pid.map_or("-".into(), |p| p.to_string()),
                p.comm.as_deref().unwrap_or("?"),
                p.count,
                p.growth_per_min
            )));
        }
        if cw.is_empty() {
            cw.push(Line::from(" none").fg(DIM));
        }
        Paragraph::new(cw)
            .block(titled(Line::from(" Top CLOSE_WAIT (2) ").bold()))
            .render(left, buf);
        let mut tw: Vec<Line> = vec![];
        for &i in self
            .time_wait
            .rows
            .iter()
            .take(rest.height.saturating_sub(1) as usize)
        {
            let p = &d.tw_peers[i];
            tw.push(Line::from(format!(
                " {:<22} {:>6} {:>5.1}%",
                SocketAddr::new(p.daddr, p.dport).to_string(),
                p.count,
                p.port_range_ratio * 100.0
            )));
        }
        if tw.is_empty() {
            tw.push(Line::from(" none").fg(DIM));
        }
        Paragraph::new(tw)
            .block(titled(Line::from(" Top TIME_WAIT peers (3) ").bold()))
            .render(right, buf);
    }

    fn render_close_wait(&self, area: Rect, buf: &mut Buffer) {
        let d = self.data.as_ref().expect("checked by caller");
        if let Some(pid) = self.close_wait_drill {
            let sockets = d
                .close_wait_sockets
                .get(&pid)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let total = d
                .snap
                .close_wait_by_process
                .iter()
                .find(|p| p.pid == pid)
                .map_or(0, |p| p.count);
            let who = match pid {
                Some(p) => format!(
                    "{p} {}",
                    sockets
                        .first()
                        .and_then(|s| s.comm.clone())
                        .unwrap_or_default()
                ),
                None => "unknown owner".into(),
            };
            let shown = if (total as usize) > sockets.len() {
                format!(", oldest {} shown", sockets.len())
            } else {
                String::new()
            };
            let block = titled_with(
                format!(" CLOSE_WAIT sockets of {who} "),
                format!("({total}{shown}, oldest first; Esc back) "),
            );
            let rows = &self.close_wait_sockets.rows;
            window_table(
                area,
                buf,
                block,
                &["LOCAL", "REMOTE", "AGE IN CLOSE_WAIT"],
                &[
                    Constraint::Min(22),
                    Constraint::Min(22),
                    Constraint::Length(18),
                ],
                rows.len(),
                Some(self.close_wait_sockets.selected),
                |i| {
                    let s = &sockets[rows[i]];
                    let age = Cell::from(fmt_age(s.age_ms, s.age_is_lower_bound));
                    Row::new(vec![
                        Cell::from(SocketAddr::new(s.saddr, s.sport).to_string()),
                        Cell::from(SocketAddr::new(s.daddr, s.dport).to_string()),
                        if s.age_is_lower_bound {
                            age.fg(WARN)
                        } else {
                            age
                        },
                    ])
                },
            );
            return;
        }
        let procs = &d.snap.close_wait_by_process;
        let total: u64 = procs.iter().map(|p| p.count).sum();
        let block = titled_with(
            " CLOSE_WAIT by process ",
            format!(
                "({total} sockets; sort: {}; Enter: sockets) ",
                self.close_wait_sort.name()
            ),
        );
        let rows = &self.close_wait.rows;
        let wide = area.width >= 100;
        let mut header = vec!["PID", "COMM", "COUNT", "+/MIN 1m", "5m", "15m", "OLDEST"];
        let mut widths = vec![
            Constraint::Length(7),
            Constraint::Length(15),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(10),
        ];
        if wide || area.width >= 80 {
            header.push("PEERS");
            widths.push(Constraint::Min(10));
        }
        window_table(
            area,
            buf,
            block,
            &header,
            &widths,
            rows.len(),
            Some(self.close_wait.selected),
            |i| {
                let p = &procs[rows[i]];
                let growth = |g: f64| {
                    let c = Cell::from(format!("{g:+.1}"));
                    if g > 0.0 { c.fg(BAD) } else { c }
                };
                let oldest = Cell::from(fmt_age(p.oldest_age_ms, p.oldest_age_is_lower_bound));
                Row::new(vec![
                    Cell::from(p.pid.map_or("-".into(), |p| p.to_string())),
                    Cell::from(p.comm.clone().unwrap_or_else(|| "?".into())),
                    Cell::from(p.count.to_string()).bold(),
                    growth(p.growth_per_min),
                    growth(p.growth_per_min_5m),
                    growth(p.growth_per_min_15m),
                    if p.oldest_age_is_lower_bound {
                        oldest.fg(WARN)
                    } else {
                        oldest
                    },
                    Cell::from(p.peers.join(" ")),
                ])
            },
        );
    }

    fn render_time_wait(&self, area: Rect, buf: &mut Buffer) {
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

    fn render_connections(&self, area: Rect, buf: &mut Buffer) {
        let page = &self.conns;
        let more = if page.matching as usize > page.rows.len() {
            format!(", first {} loaded", page.rows.len())
        } else {
            String::new()
        };
        let of = if self.filter.is_empty() {
            String::new()
        } else {
            format!(" of {}", page.total)
        };
        let block = titled_with(
            " Connections ",
            format!(
                "({}{of}{more}; sort: {}; Enter: details) ",
                page.matching,
                self.request.sort.name()
            ),
        );
        // 80 columns fit state, process, both addresses and the age; wider
        // screens add the time in state and the network namespace.
        let mut header = vec!["STATE", "PROCESS", "LOCAL", "REMOTE", "AGE"];
        let mut widths = vec![
            Constraint::Length(11),
            Constraint::Length(14),
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(8),
        ];
        let in_state = area.width >= 100;
        let netns = area.width >= 130;
        if in_state {
            header.push("IN STATE");
            widths.push(Constraint::Length(9));
        }
        if netns {
            header.push("NETNS");
            widths.push(Constraint::Length(11));
        }
        window_table(
            area,
            buf,
            block,
            &header,
            &widths,
            page.rows.len(),
            Some(self.conn_selected),
            |i| {
                let r = &page.rows[i];
                let mut cells = vec![
                    Cell::from(r.state.name()).fg(state_color(r.state)),
                    Cell::from(match (r.pid, r.comm) {
                        (Some(p), Some(c)) => format!("{p}/{}", c.to_str_lossy()),
                        _ => "-".into(),
                    }),
                    Cell::from(SocketAddr::new(r.saddr, r.sport).to_string()),
                    Cell::from(SocketAddr::new(r.daddr, r.dport).to_string()),
                    Cell::from(fmt_age(r.age_ms, r.age_is_lower_bound)),
                ];
                if in_state {
                    cells.push(Cell::from(fmt_age(
                        r.state_age_ms,
                        r.state_age_is_lower_bound,
                    )));
                }
                if netns {
                    cells.push(Cell::from(r.netns.to_string()));
                }
                Row::new(cells)
            },
        );
    }

    fn render_conn_detail(&self, area: Rect, buf: &mut Buffer) {
        let Some(r) = self.conns.rows.get(self.conn_selected) else {
            return;
        };
        let popup = centered(area, 64, 11);
        Clear.render(popup, buf);
        Paragraph::new(conn_detail_lines(r))
            .block(
                Block::default()
                    .borders(Borders::ALL)
                    .title(" Connection (Esc to close) ".bold())
                    .border_style(Style::default().fg(ACCENT)),
            )
            .render(popup, buf);
    }

    fn render_histograms(&self, area: Rect, buf: &mut Buffer) {
        let d = self.data.as_ref().expect("checked by caller");
        let [left, right] =
            Layout::horizontal([Constraint::Length(24), Constraint::Min(30)]).areas(area);
        let keys = &self.hist_keys;
        let label = |k: &HistKey| match k {
            HistKey::All => "all connections".to_string(),
            HistKey::Process(pid) => format!(
                "{pid} {}",
                d.hists_by_process
                    .iter()
                    .find(|h| h.pid == Some(*pid))
                    .and_then(|h| h.comm.clone())
                    .unwrap_or_default()
            ),
            HistKey::Peer(ip, port) => SocketAddr::new(*ip, *port).to_string(),
        };
        window_table(
            left,
            buf,
            titled(Line::from(" For ").bold()),
            &["PROCESS / PEER"],
            &[Constraint::Min(10)],
            keys.len(),
            Some(self.hist_selected),
            |i| Row::new(vec![Cell::from(label(&keys[i]))]),
        );
        let (who, hists) = self.selected_histograms();
        let block =
            titled_with(" Durations ", format!("({who}) ")).borders(Borders::TOP | Borders::LEFT);
        let rows: Vec<Row> = hists
            .iter()
            .map(|(k, h)| {
                let dim = h.count == 0;
                let cells = if dim {
                    vec![
                        Cell::from(hist_label(*k)),
                        Cell::from("0"),
                        Cell::from("-"),
                        Cell::from("-"),
                        Cell::from("-"),
                        Cell::from("-"),
                    ]
                } else {
                    vec![
                        Cell::from(hist_label(*k)),
                        Cell::from(fmt_count(h.count as f64)),
                        Cell::from(fmt_ms(h.p50_ms)),
                        Cell::from(fmt_ms(h.p90_ms)),
                        Cell::from(fmt_ms(h.p99_ms)).bold(),
                        Cell::from(fmt_ms(h.max_ms)),
                    ]
                };
                let row = Row::new(cells);
                if dim { row.fg(DIM) } else { row }
            })
            .collect();
        Table::new(
            rows,
            [
                Constraint::Length(13),
                Constraint::Length(6),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(7),
                Constraint::Length(7),
            ],
        )
        .header(Row::new(vec!["PHASE", "COUNT", "p50", "p90", "p99", "max"]).style(header_style()))
        .block(block)
        .render(right, buf);
    }

    /// One line: the first firing alert's message (and how many more), or
    /// that `watch`'s default rules are quiet.
    fn render_alerts(&self, area: Rect, buf: &mut Buffer) {
        let alerts = self.data.as_ref().map_or(&[][..], |d| &d.alerts[..]);
        let line = match alerts {
            [] => Line::from(vec![
                Span::raw(" alerts ").fg(Color::Black).bg(DIM),
                Span::raw(if self.data.is_some() {
                    " none (watch's default rules)"
                } else {
                    " waiting for the first refresh"
                })
                .fg(DIM),
            ]),
            [first, rest @ ..] => {
                let mut spans = vec![
                    Span::raw(format!(" {} alert{} ", alerts.len(), plural(alerts.len())))
                        .fg(Color::Black)
                        .bg(BAD)
                        .bold(),
                    Span::raw(format!(" {}: ", first.rule)).fg(BAD).bold(),
                ];
                if !rest.is_empty() {
                    let others: Vec<&str> = rest.iter().map(|a| a.rule).collect();
                    spans.push(Span::raw(format!("(+{}) ", others.join(", "))).fg(WARN));
                }
                spans.push(Span::raw(first.message.clone()));
                Line::from(spans)
            }
        };
        line.render(area, buf);
    }

    fn render_footer(&self, area: Rect, buf: &mut Buffer) {
        if let Some(text) = &self.filter_input {
            let mut spans = vec![
                Span::raw(" filter: ").fg(Color::Black).bg(ACCENT),
                Span::raw(format!(" {text}")),
                Span::raw("_").slow_blink(),
            ];
            match &self.filter_error {
                Some(e) => spans.push(Span::raw(format!("  {e}")).fg(BAD)),
                None => spans.push(
                    Span::raw("  e.g. 5432 pid:42 comm:java addr:10.0. state:close_wait; Enter apply, Esc cancel")
                        .fg(DIM),
                ),
            }
            Line::from(spans).render(area, buf);
            return;
        }
        if let Some(msg) = &self.fatal {
            Line::from(Span::raw(format!(" {msg}")).fg(BAD).bold()).render(area, buf);
            return;
        }
        let mut spans = vec![];
        if !self.filter.is_empty() {
            spans.push(
                Span::raw(format!(" filter: {} ", self.filter.text))
                    .fg(Color::Black)
                    .bg(WARN),
            );
            spans.push(Span::raw(" "));
        }
        let playing = self
            .data
            .as_ref()
            .and_then(|d| d.playback)
            .is_some_and(|p| p.playing);
        let last = if self.meta.source.is_some() {
            [
                ("space", if playing { "pause" } else { "play" }),
                ("[ ]", "step"),
                ("+/-", "speed"),
            ]
        } else {
            [
                ("p", if self.paused { "resume" } else { "pause" }),
                ("", ""),
                ("", ""),
            ]
        };
        let keys = [
            ("q", "quit"),
            ("?", "help"),
            ("Tab", "view"),
            ("j/k", "move"),
            ("Enter", "drill"),
            ("Esc", "back"),
            ("s", "sort"),
            ("/", "filter"),
        ];
        for (k, what) in keys.into_iter().chain(last).filter(|(k, _)| !k.is_empty()) {
            spans.push(Span::raw(format!(" {k}")).bold());
            spans.push(Span::raw(format!(" {what}")).fg(DIM));
        }
        Line::from(spans).render(area, buf);
    }
}

/// Play state, speed and position of a replay, for the header.
fn playback_spans(p: &PlaybackStatus) -> Vec<Span<'static>> {
    let state = if p.ended {
        Span::raw(" END ").bold().fg(Color::Black).bg(DIM)
    } else if p.playing {
        Span::raw(format!(" ▶ {} ", fmt_speed(p.speed)))
            .bold()
            .fg(Color::Black)
            .bg(GOOD)
    } else {
        Span::raw(" PAUSED ").bold().fg(Color::Black).bg(WARN)
    };
    let mut spans = vec![
        state,
        Span::raw(format!(
            " {} (+{})",
            hms_millis(p.at_wall_ns)
                .split('.')
                .next()
                .unwrap_or_default(),
            fmt_position(p.at_ms)
        )),
    ];
    if p.catching_up {
        spans.push(Span::raw(format!(" seeking to +{}", fmt_position(p.target_ms))).fg(WARN));
    }
    if let Some(at) = p.cut_at {
        spans.push(Span::raw(format!(" file cut at byte {at}")).bold().fg(BAD));
    }
    spans
}

/// Time into a recording: "0.0s", "42.5s", then as [`fmt_ms`] ("1m15s").
fn fmt_position(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        fmt_ms(ms as f64)
    }
}

fn fmt_speed(x: f64) -> String {
    if x >= 1.0 {
        format!("{}x", x.round())
    } else {
        format!("1/{}x", (1.0 / x).round())
    }
}

fn conn_detail_lines(r: &ConnRow) -> Vec<Line<'static>> {
    let field =
        |k: &str, v: String| Line::from(vec![Span::raw(format!(" {k:<10}")).fg(DIM), Span::raw(v)]);
    vec![
        field(
            "state",
            format!(
                "{}{}",
                r.state.name(),
                if r.timewait { " (timewait socket)" } else { "" }
            ),
        ),
        field(
            "process",
            match (r.pid, r.comm) {
                (Some(p), Some(c)) => format!("{p} {}", c.to_str_lossy()),
                _ => "unknown (no owner seen)".into(),
            },
        ),
        field("local", SocketAddr::new(r.saddr, r.sport).to_string()),
        field("remote", SocketAddr::new(r.daddr, r.dport).to_string()),
        field("netns", r.netns.to_string()),
        field("age", fmt_age(r.age_ms, r.age_is_lower_bound)),
        field(
            "in state",
            fmt_age(r.state_age_ms, r.state_age_is_lower_bound),
        ),
        field(
            "closed by",
            match r.closer {
                Some(tcptrace_core::conn::Closer::Active) => "us first (active close)".into(),
                Some(tcptrace_core::conn::Closer::Passive) => "peer first (passive close)".into(),
                Some(tcptrace_core::conn::Closer::Simultaneous) => "both at once".into(),
                None => "-".into(),
            },
        ),
        Line::from(if r.age_is_lower_bound {
            " >= : existed before tcptrace started; age is a lower bound"
        } else {
            ""
        })
        .fg(DIM),
    ]
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

const HELP: &[(&str, &str)] = &[
    ("Tab / 1-5", "switch view (Shift-Tab, Left: back)"),
    ("j k / arrows", "move; PgUp PgDn g G: page, top, end"),
    (
        "Enter",
        "drill in (process sockets, peer histograms, details)",
    ),
    ("Esc", "back; clears the filter when nothing is open"),
    ("s", "cycle sort of the current list"),
    ("/", "filter: 5432 pid:42 comm:java addr:10.0. state:cw"),
    ("p", "pause the screen (collection continues)"),
    ("q Ctrl-C", "quit"),
    ("", ""),
    (">=", "age is a lower bound (socket predates tcptrace)"),
    ("PORTS", "share of ip_local_port_range held in TIME_WAIT"),
];

/// Keys of a replay (`top --from`), after [`HELP`]'s first lines.
fn replay_help(step_ms: u64) -> Vec<(&'static str, String)> {
    let step = fmt_ms(step_ms as f64);
    let far = fmt_ms(step_ms as f64 * 10.0);
    vec![
        ("space p", "play / pause the recording".into()),
        ("[ ]", format!("step back / forward {step} of recording")),
        ("{ }", format!("step back / forward {far}")),
        ("+ -", "play twice as fast / half as fast".into()),
    ]
}

/// The `?` overlay; `replay_step_ms` is set for replays.
fn render_help(area: Rect, buf: &mut Buffer, replay_step_ms: Option<u64>) {
    let mut rows: Vec<(&str, String)> = HELP
        .iter()
        .filter(|(k, _)| replay_step_ms.is_none() || *k != "p")
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    if let Some(step_ms) = replay_step_ms {
        let at = rows.iter().position(|(k, _)| *k == "q Ctrl-C").unwrap_or(0);
        rows.splice(at..at, replay_help(step_ms));
    }
    let popup = centered(area, 72, rows.len() as u16 + 2);
    Clear.render(popup, buf);
    let lines: Vec<Line> = rows
        .into_iter()
        .map(|(k, v)| Line::from(vec![Span::raw(format!(" {k:<14}")).bold(), Span::raw(v)]))
        .collect();
    Paragraph::new(lines)
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" Keys (any key closes) ".bold())
                .border_style(Style::default().fg(ACCENT)),
        )
        .render(popup, buf);
}

#[cfg(test)]
mod tests;
