//! The overview: live count per state with sparklines, the transition rate,
//! the top CLOSE_WAIT holders and the top TIME_WAIT services and destinations.

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style, Stylize},
    text::{Line, Span},
    widgets::{Paragraph, Sparkline, Widget},
};
use tcptrace_core::app::data::PANEL_STATES;

use super::super::{screen::Screen, theme::*, widgets::*};

impl Screen<'_> {
    pub(in crate::tui) fn render_overview(&self, area: Rect, buf: &mut Buffer) {
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
            let growth = if p.growth_span_ms + 1_500 >= 60_000 {
                format!("{:>+7.1}/m", p.growth_per_min)
            } else {
                format!(
                    "{:>9}",
                    fmt_growth_short(p.growth_delta, p.growth_span_ms, 60_000)
                )
            };
            cw.push(Line::from(format!(
                " {:>6} {:<12} {:>6} {growth}",
                p.pid.map_or("-".into(), |p| p.to_string()),
                p.comm.as_deref().unwrap_or("?"),
                p.count,
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
            let g = &d.tw_groups[i];
            let extra = match g.port_share {
                Some(share) => format!("{:>5.1}%", share * 100.0),
                None => format!("{:>4.0}/s", g.rate_per_sec),
            };
            // What the count and share leave (" {where} {count:6} {extra:7}").
            let room = usize::from(right.width).saturating_sub(16).max(12);
            tw.push(Line::from(format!(
                " {:<22} {:>6} {extra}",
                fit_middle(&super::time_wait::where_(g), room),
                fmt_count(g.count as f64),
            )));
        }
        if tw.is_empty() {
            tw.push(Line::from(" none").fg(DIM));
        }
        Paragraph::new(tw)
            .block(titled(Line::from(" Top TIME_WAIT (3) ").bold()))
            .render(right, buf);
    }
}
