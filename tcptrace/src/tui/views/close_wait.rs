//! CLOSE_WAIT: processes ranked by CLOSE_WAIT sockets, their growth and
//! oldest socket; Enter lists a process's sockets, and with `--stacks` the
//! code paths that opened them above (Enter again: the full stack).

use std::net::SocketAddr;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::Stylize,
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row, Widget},
};
use tcptrace_core::{app::quality_note, output::escape, stats::CloseWaitByStack};

use super::super::{screen::Screen, theme::*, widgets::*};

impl Screen<'_> {
    pub(in crate::tui) fn render_close_wait(&self, area: Rect, buf: &mut Buffer) {
        let d = self.data.as_ref().expect("checked by caller");
        if let Some(pid) = self.close_wait_drill {
            let paths = d.snap.close_wait_by_stack.as_deref().unwrap_or_default();
            let selected_path = self
                .close_wait_paths
                .rows
                .get(self.close_wait_paths.selected)
                .and_then(|&i| paths.get(i));
            if let Some(row) = selected_path
                && self.close_wait_stack_open
            {
                render_stack(row, area, buf);
                return;
            }
            let area = if self.close_wait_paths.rows.is_empty() {
                area
            } else {
                // The code paths on top (at most 40% of the height), the
                // sockets below.
                let want = self.close_wait_paths.rows.len() as u16 + 3;
                let top = want.min(area.height * 2 / 5).max(4);
                let [paths_area, sockets_area] =
                    Layout::vertical([Constraint::Length(top), Constraint::Min(3)]).areas(area);
                self.render_code_paths(paths, paths_area, buf);
                sockets_area
            };
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
        if self.by_workload {
            let all = &d.snap.close_wait_by_workload;
            let rows: Vec<_> = self
                .close_wait_workloads
                .iter()
                .filter_map(|&i| all.get(i))
                .collect();
            let total: u64 = rows.iter().map(|w| w.count).sum();
            let block = titled_with(
                " CLOSE_WAIT by workload ",
                format!("({total} sockets; w: by process) "),
            );
            window_table(
                area,
                buf,
                block,
                &["WORKLOAD", "KIND", "COUNT", "OLDEST", "PIDS", "PEERS"],
                &[
                    Constraint::Length(32),
                    Constraint::Length(10),
                    Constraint::Length(7),
                    Constraint::Length(9),
                    Constraint::Length(18),
                    Constraint::Min(10),
                ],
                rows.len(),
                None,
                |i| {
                    let w = &rows[i];
                    let oldest = Cell::from(fmt_age(w.oldest_age_ms, w.oldest_age_is_lower_bound));
                    Row::new(vec![
                        Cell::from(tcptrace_core::output::text::cut_middle(&w.workload, 32)),
                        Cell::from(w.workload_kind),
                        Cell::from(w.count.to_string()).bold(),
                        if w.oldest_age_is_lower_bound {
                            oldest.fg(WARN)
                        } else {
                            oldest
                        },
                        Cell::from(
                            w.pids
                                .iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(" "),
                        ),
                        Cell::from(w.peers.join(" ")),
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
                "({total} sockets; sort: {}; Enter: sockets; w) ",
                self.close_wait_sort.name()
            ),
        );
        let rows = &self.close_wait.rows;
        let mut header = vec!["PID", "COMM", "COUNT", "+/MIN 1m", "5m", "15m", "OLDEST"];
        // Growth is "+12.5" per minute, or "+1500/4.2m" over a shorter span.
        let mut widths = vec![
            Constraint::Length(7),
            Constraint::Length(15),
            Constraint::Length(7),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(9),
        ];
        // The owner's unit, container or pod, on wide screens.
        let workloads = area.width >= 120;
        if workloads {
            header.push("WORKLOAD");
            widths.push(Constraint::Length(24));
        }
        if area.width >= 90 {
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
                // Per minute once the window is full; before, what was
                // measured ("+20/10.0s"); "-" for a window no longer than
                // the previous one's history.
                let growth = |delta: i64, span_ms: u64, window_ms: u64, shorter: u64| {
                    if window_ms > 60_000 && span_ms <= shorter {
                        return Cell::from("-").fg(DIM);
                    }
                    let c = Cell::from(fmt_growth_short(delta, span_ms, window_ms));
                    if delta > 0 { c.fg(BAD) } else { c }
                };
                let oldest = Cell::from(fmt_age(p.oldest_age_ms, p.oldest_age_is_lower_bound));
                let mut cells = vec![
                    Cell::from(p.pid.map_or("-".into(), |p| p.to_string())),
                    Cell::from(p.comm.clone().unwrap_or_else(|| "?".into())),
                    Cell::from(p.count.to_string()).bold(),
                    growth(p.growth_delta, p.growth_span_ms, 60_000, 0),
                    growth(
                        p.growth_delta_5m,
                        p.growth_span_5m_ms,
                        300_000,
                        p.growth_span_ms + 1_500,
                    ),
                    growth(
                        p.growth_delta_15m,
                        p.growth_span_15m_ms,
                        900_000,
                        p.growth_span_5m_ms + 1_500,
                    ),
                    if p.oldest_age_is_lower_bound {
                        oldest.fg(WARN)
                    } else {
                        oldest
                    },
                ];
                if workloads {
                    cells.push(Cell::from(p.workload.workload.as_deref().map_or_else(
                        || "-".to_string(),
                        |w| tcptrace_core::output::text::cut_middle(w, 24),
                    )));
                }
                cells.push(Cell::from(p.peers.join(" ")));
                Row::new(cells)
            },
        );
    }
}

impl Screen<'_> {
    /// The drilled process's code paths (`--stacks`): sockets, oldest and
    /// where they were opened, most first; the selected one's quality note
    /// in the title when it is not complete.
    fn render_code_paths(&self, paths: &[CloseWaitByStack], area: Rect, buf: &mut Buffer) {
        let rows = &self.close_wait_paths.rows;
        let Some(first) = rows.first().and_then(|&i| paths.get(i)) else {
            return;
        };
        let with_stack: u64 = rows
            .iter()
            .map(|&i| &paths[i])
            .filter(|r| r.stack_id.is_some())
            .map(|r| r.count)
            .sum();
        let who = format!(
            "{} {}",
            first.pid.map_or("-".into(), |p| p.to_string()),
            escape(first.comm.as_deref().unwrap_or("?"))
        );
        let note = rows
            .get(self.close_wait_paths.selected)
            .and_then(|&i| paths.get(i))
            .and_then(|r| quality_note(r.stack_quality))
            .map_or_else(String::new, |n| format!(" [{n}]"));
        let block = titled_with(
            format!(" Code paths of {who} "),
            format!(
                "({with_stack} of {} with a stack; Enter: full stack){note} ",
                first.process_count
            ),
        );
        window_table(
            area,
            buf,
            block,
            &["COUNT", "OLDEST", "OPENED AT"],
            &[
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Min(20),
            ],
            rows.len(),
            Some(self.close_wait_paths.selected),
            |i| {
                let r = &paths[rows[i]];
                let oldest = Cell::from(fmt_age(r.oldest_age_ms, r.oldest_age_is_lower_bound));
                let path = Cell::from(escape(&r.code_path).into_owned());
                Row::new(vec![
                    Cell::from(r.count.to_string()).bold(),
                    if r.oldest_age_is_lower_bound {
                        oldest.fg(WARN)
                    } else {
                        oldest
                    },
                    if r.stack_id.is_none() || r.stack_quality != "complete" {
                        path.fg(DIM)
                    } else {
                        path
                    },
                ])
            },
        );
    }
}

/// One code path's full stack, innermost frame first, and what its quality
/// means.
fn render_stack(row: &CloseWaitByStack, area: Rect, buf: &mut Buffer) {
    let who = format!(
        "{} {}",
        row.pid.map_or("-".into(), |p| p.to_string()),
        escape(row.comm.as_deref().unwrap_or("?"))
    );
    let block = titled_with(
        format!(" Stack of {who} "),
        format!(
            "({} socket{}, {}; Esc back) ",
            row.count,
            plural(row.count as usize),
            row.stack_quality
        ),
    );
    let mut lines: Vec<Line> = row
        .frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            Line::from(vec![
                Span::raw(format!("#{i:<3} ")).fg(DIM),
                Span::raw(escape(&f.describe()).into_owned()),
            ])
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::from(escape(&row.code_path).into_owned()).fg(DIM));
    }
    if let Some(note) = quality_note(row.stack_quality) {
        lines.push(Line::from(note).fg(WARN));
    }
    Paragraph::new(lines).block(block).render(area, buf);
}
