//! Histograms: state durations, handshakes and lifetimes, per host, process or peer.

use std::net::SocketAddr;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::Stylize,
    text::Line,
    widgets::{Borders, Cell, Row, Table, Widget},
};
use tcptrace_core::app::HistKey;

use super::super::{screen::Screen, theme::*, widgets::*};

impl Screen<'_> {
    pub(in crate::tui) fn render_histograms(&self, area: Rect, buf: &mut Buffer) {
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
}
