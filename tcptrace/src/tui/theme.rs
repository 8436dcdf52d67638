//! `top`'s look in one place: the colors, the styles built from them, and
//! how states are named and colored, so every view agrees.

use ratatui::style::{Color, Modifier, Style};
use tcptrace_core::{model::TcpState, stats::HistKind};

pub const ACCENT: Color = Color::Cyan;
pub const WARN: Color = Color::Yellow;
pub const BAD: Color = Color::Red;
pub const GOOD: Color = Color::Green;
pub const DIM: Color = Color::DarkGray;

pub fn selected_style() -> Style {
    Style::default().add_modifier(Modifier::REVERSED)
}

pub use crate::clock::{fmt_age, fmt_growth_short, fmt_ms};

pub fn header_style() -> Style {
    Style::default().fg(ACCENT).add_modifier(Modifier::BOLD)
}

pub fn short_state(s: TcpState) -> &'static str {
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

pub fn state_color(s: TcpState) -> Color {
    match s {
        TcpState::CloseWait => BAD,
        TcpState::TimeWait => WARN,
        TcpState::Established => GOOD,
        TcpState::SynSent | TcpState::SynRecv => ACCENT,
        _ => Color::Magenta,
    }
}

pub fn hist_label(k: HistKind) -> &'static str {
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
