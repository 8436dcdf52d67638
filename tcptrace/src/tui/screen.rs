//! `top`'s screen: a pure function of [`App`] (the state lives in the
//! core; [`Screen`] is where ratatui meets it). The frame (header, tabs,
//! state strip, alert strip, footer, help) is drawn here; the body by the
//! current view, one file each in [`super::views`].

use std::net::SocketAddr;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Clear, Paragraph, Tabs, Widget, Wrap},
};
use tcptrace_core::{
    app::{
        App, View,
        data::{ConnRow, PANEL_STATES, PlaybackStatus},
    },
    clock::hms_millis,
    model::TcpState,
};

use super::{
    theme::*,
    widgets::{centered, fmt_count, plural},
};

/// Smallest screen drawn; below it a one-line notice.
const MIN_SIZE: (u16, u16) = (40, 12);

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
                View::Listeners => self.render_listeners(body, buf),
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
        // Shorter names when the full ones would not fit (86 columns):
        // first the longest two, then the state names too.
        let medium = area.width < 86;
        let short = area.width < 74;
        let titles = View::ALL.iter().enumerate().map(|(i, v)| {
            let name = match (short, medium, v) {
                (true, _, View::CloseWait) => "CW",
                (true, _, View::TimeWait) => "TW",
                (_, true, View::Connections) => "Conns",
                (_, true, View::Histograms) => "Hist",
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
        // Connection attempts dropped at listeners now (the Listeners
        // view, `l`, says where and why): seen from every view.
        if let Some(l) = &d.snap.listen_drops
            && l.per_sec > 0.0
        {
            spans.push(Span::styled(
                format!("DROPS {}/s", fmt_rate(l.per_sec)),
                Style::default().fg(BAD).bold(),
            ));
        }
        Line::from(spans).render(area, buf);
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
                // Alert messages quote process and workload names.
                spans.push(Span::raw(
                    tcptrace_core::output::escape(&first.message).into_owned(),
                ));
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

/// A rate for the state strip: "0.4", "12.3", "1.2k".
fn fmt_rate(x: f64) -> String {
    if x < 100.0 {
        format!("{x:.1}")
    } else {
        fmt_count(x)
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

const HELP: &[(&str, &str)] = &[
    (
        "Tab / 1-6 / l",
        "switch view (Shift-Tab, Left: back; l: Listeners)",
    ),
    ("j k / arrows", "move; PgUp PgDn g G: page, top, end"),
    (
        "Enter",
        "drill in (process sockets, peer histograms, details)",
    ),
    (
        "",
        "  on a code path (CLOSE_WAIT, --stacks): its full stack",
    ),
    ("Esc", "back; clears the filter when nothing is open"),
    ("s", "cycle sort of the current list"),
    ("w", "CLOSE_WAIT, TIME_WAIT: by process <-> by workload"),
    ("/", "filter: 5432 pid:42 comm:java addr:10.0. state:cw"),
    ("", "  workload:shop/ (a bare word: process or workload)"),
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
