//! Small pieces every view draws with: titled blocks, a table that renders
//! only its visible window (a frame costs the same with ten rows or a
//! million), counts and plurals.

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Rect},
    style::{Style, Stylize},
    text::{Line, Span},
    widgets::{Block, Borders, Row, Table, Widget},
};

use super::theme::{DIM, header_style, selected_style};

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

/// The first row shown so that `selected` is visible: whole pages, so rows
/// do not shift under the cursor.
pub fn page_offset(selected: usize, visible: usize) -> usize {
    selected
        .checked_div(visible)
        .map_or(0, |page| page * visible)
}

pub fn titled(title: impl Into<Line<'static>>) -> Block<'static> {
    Block::default()
        .borders(Borders::TOP)
        .title(title.into())
        .border_style(Style::default().fg(DIM))
}

/// A title in bold with its details dimmed: ` NAME (details) `.
pub fn titled_with(name: impl Into<String>, details: String) -> Block<'static> {
    titled(Line::from(vec![
        Span::raw(name.into()).bold(),
        Span::raw(details).fg(DIM),
    ]))
}

/// A table of the rows `make(i)` for `i` in the visible window of `len`
/// rows around `selected`.
#[allow(clippy::too_many_arguments)]
pub fn window_table<'a>(
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

pub fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

pub fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `text` cut in the middle to `width` characters ("to [2001:db8:…:fe01]:8443"),
/// so both its start and its end (an address's port) stay visible.
pub fn fit_middle(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width || width < 3 {
        return text.to_string();
    }
    let keep = width - 1;
    let tail = keep / 2;
    let head = keep - tail;
    let start: String = text.chars().take(head).collect();
    let end: String = text.chars().skip(n - tail).collect();
    format!("{start}…{end}")
}

#[cfg(test)]
mod tests {
    use super::fit_middle;

    #[test]
    fn fit_middle_keeps_both_ends() {
        let w = "to [2001:db8:ffff:ffff:ffff:ffff:ffff:fe01]:8443";
        let f = fit_middle(w, 27);
        assert_eq!(f.chars().count(), 27);
        assert!(
            f.starts_with("to [2001:db8:") && f.ends_with("fe01]:8443"),
            "{f}"
        );
        assert_eq!(fit_middle("svc 1.2.3.4:80", 27), "svc 1.2.3.4:80");
    }
}
