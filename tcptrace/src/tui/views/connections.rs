//! Connections: every live socket, sorted and filtered on the engine side; Enter shows one in detail.

use std::net::SocketAddr;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Rect},
    style::Stylize,
    widgets::{Cell, Row},
};

use super::super::{screen::Screen, theme::*, widgets::*};

impl Screen<'_> {
    pub(in crate::tui) fn render_connections(&self, area: Rect, buf: &mut Buffer) {
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
}
