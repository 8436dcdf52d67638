//! The state of `tcptrace top` and its reducer: keys become [`Action`]s,
//! actions change [`App`], and the screen is drawn from `App` alone (see
//! `tui::render`). No terminal types here: keys arrive as [`Key`], data as
//! [`TopData`]/[`ConnPage`] from the engine, so every behaviour is unit-tested.

pub mod data;
pub mod filter;

use std::{cmp::Reverse, net::IpAddr};

pub use data::{ConnPage, ConnSort, PlaybackCommand, PlaybackStatus, TopData, ViewRequest};
pub use filter::RowFilter;

use self::filter::RowView;
use crate::stats::HistKind;

/// The screens, in tab order (keys 1-6; `l` also opens Listeners).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    #[default]
    Overview,
    CloseWait,
    TimeWait,
    Connections,
    Histograms,
    /// Listening sockets: accept queues and the SYNs/ACKs dropped at them.
    Listeners,
}

impl View {
    pub const ALL: [View; 6] = [
        View::Overview,
        View::CloseWait,
        View::TimeWait,
        View::Connections,
        View::Histograms,
        View::Listeners,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::CloseWait => "CLOSE_WAIT",
            View::TimeWait => "TIME_WAIT",
            View::Connections => "Connections",
            View::Histograms => "Histograms",
            View::Listeners => "Listeners",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }
}

/// A key press, independent of the terminal library.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Ctrl(char),
    Enter,
    Esc,
    Tab,
    BackTab,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
    Backspace,
}

/// Everything that changes the app.
#[derive(Clone, Debug)]
pub enum Action {
    Quit,
    ShowView(View),
    NextView,
    PrevView,
    /// Move the selection by n rows (negative: up).
    Move(isize),
    /// Move by n pages.
    MovePages(isize),
    Top,
    Bottom,
    /// Drill into the selected row.
    Enter,
    /// Leave the drill-down, detail, help or filter; else clear the filter.
    Back,
    CycleSort,
    StartFilter,
    FilterInput(char),
    FilterBackspace,
    ApplyFilter,
    TogglePause,
    /// A replay command, for the engine (`top --from`).
    Playback(PlaybackCommand),
    ToggleHelp,
    /// `w`: CLOSE_WAIT and TIME_WAIT grouped by process <-> by workload
    /// (unit, container, pod).
    ToggleGrouping,
    /// The terminal now has this many columns and rows.
    Resize(u16, u16),
    /// A refresh from the engine.
    Data(Box<TopData>),
    /// A connection page answering a [`ViewRequest`].
    Page(ConnPage),
    /// The engine stopped; shown, then the app quits.
    Fatal(String),
}

/// Facts fixed for the whole session, for the header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub host: String,
    pub kernel: String,
    /// Transition hook in use ("tp_btf" or "tracepoint").
    pub hook: String,
    /// TIME_WAIT path ("fentry", "timer tp_btf" or "timer tracepoints").
    pub timewait_hook: String,
    /// Where events come from, when not the live kernel (a recording).
    pub source: Option<String>,
    pub interval_ms: u64,
    /// Recording time per `[`/`]` step, for the help (replays only).
    pub step_ms: u64,
}

/// How the CLOSE_WAIT process list is ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CloseWaitSort {
    #[default]
    Count,
    Growth,
    Oldest,
}

impl CloseWaitSort {
    fn next(self) -> Self {
        match self {
            Self::Count => Self::Growth,
            Self::Growth => Self::Oldest,
            Self::Oldest => Self::Count,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Growth => "growth",
            Self::Oldest => "oldest",
        }
    }
}

/// How the TIME_WAIT peer list is ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimeWaitSort {
    #[default]
    Count,
    Duration,
    Peer,
}

impl TimeWaitSort {
    fn next(self) -> Self {
        match self {
            Self::Count => Self::Duration,
            Self::Duration => Self::Peer,
            Self::Peer => Self::Count,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Duration => "p99 duration",
            Self::Peer => "address",
        }
    }
}

/// Which listener: its address, port and namespace.
pub type ListenerId = (Option<IpAddr>, u16, Option<u32>);

/// How the Listeners view is ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListenerSort {
    /// Dropping now first (drops/s), then most dropped since tracing began.
    #[default]
    Drops,
    /// Fullest accept queue first (depth over limit), then the deepest.
    Queue,
    /// By address and port.
    Endpoint,
}

impl ListenerSort {
    fn next(self) -> Self {
        match self {
            Self::Drops => Self::Queue,
            Self::Queue => Self::Endpoint,
            Self::Endpoint => Self::Drops,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Drops => "drops/s",
            Self::Queue => "queue fill",
            Self::Endpoint => "address",
        }
    }
}

/// Whose histograms the Histograms view shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HistKey {
    #[default]
    All,
    Process(u32),
    Peer(IpAddr, u16),
}

/// Rows of a list that are visible after filter and sort, as indices into
/// the data, plus the cursor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListView {
    pub rows: Vec<usize>,
    pub selected: usize,
}

impl ListView {
    fn clamp(&mut self) {
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }
    fn move_by(&mut self, n: isize) {
        self.selected = self.selected.saturating_add_signed(n);
        self.clamp();
    }
}

/// Rows of the connection list below which more are requested.
const CONN_ROWS_STEP: usize = 1000;

#[derive(Clone, Debug, Default)]
pub struct App {
    pub meta: Meta,
    pub view: View,
    pub data: Option<Box<TopData>>,
    /// A refresh held back while paused.
    pub held: Option<Box<TopData>>,
    pub paused: bool,
    pub help: bool,
    pub quit: bool,
    pub fatal: Option<String>,
    /// Terminal size (columns, rows).
    pub size: (u16, u16),
    pub filter: RowFilter,
    /// The filter being typed after `/`.
    pub filter_input: Option<String>,
    pub filter_error: Option<String>,
    pub close_wait_sort: CloseWaitSort,
    /// CLOSE_WAIT and TIME_WAIT shown by workload instead of by process.
    pub by_workload: bool,
    /// The workload rows the filter keeps (indices into
    /// `close_wait_by_workload` and `time_wait_by_workload`).
    pub close_wait_workloads: Vec<usize>,
    pub time_wait_workloads: Vec<usize>,
    /// Processes with CLOSE_WAIT sockets (indices into `close_wait_by_process`).
    pub close_wait: ListView,
    /// The process whose sockets are shown (its pid; `None` inside for
    /// sockets without a known owner).
    pub close_wait_drill: Option<Option<u32>>,
    /// Sockets of the drilled process (indices into its socket list).
    pub close_wait_sockets: ListView,
    /// Code paths of the drilled process (`--stacks`): indices into
    /// `close_wait_by_stack`, most sockets first. Empty without stacks.
    pub close_wait_paths: ListView,
    /// The selected code path's full stack is shown.
    pub close_wait_stack_open: bool,
    pub time_wait_sort: TimeWaitSort,
    pub time_wait: ListView,
    pub conns: ConnPage,
    pub conn_selected: usize,
    /// The selected connection's details are open.
    pub conn_detail: bool,
    pub listener_sort: ListenerSort,
    /// Listeners shown (indices into the snapshot's `listeners`: the
    /// engine's `ListenerTable` rows, workloads named by the fold).
    pub listeners: ListView,
    /// The listener the user moved the cursor to (address, port,
    /// namespace), followed across refreshes and sorts: the rows' order
    /// changes as drop rates do. Until then the cursor stays on the top row.
    pub listener_focus: Option<ListenerId>,
    /// Histogram subjects: all, then processes, then peers.
    pub hist_keys: Vec<HistKey>,
    pub hist_selected: usize,
    /// What the engine is asked for (connection sort, filter, rows).
    pub request: ViewRequest,
    /// Replay commands not yet sent to the engine.
    pub playback_out: Vec<PlaybackCommand>,
}

impl App {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            size: (80, 24),
            request: ViewRequest {
                generation: 1,
                limit: CONN_ROWS_STEP,
                ..ViewRequest::default()
            },
            hist_keys: vec![HistKey::All],
            ..Self::default()
        }
    }

    /// Rows a list can show at the current size (the body less its header).
    pub fn page_rows(&self) -> usize {
        // Header, tabs, state line, list title, column header, alerts, footer.
        (self.size.1 as usize).saturating_sub(7).max(1)
    }

    /// The key's meaning in the current mode.
    pub fn action_for(&self, key: Key) -> Option<Action> {
        if key == Key::Ctrl('c') {
            return Some(Action::Quit);
        }
        if self.filter_input.is_some() {
            return match key {
                Key::Char(c) => Some(Action::FilterInput(c)),
                Key::Backspace => Some(Action::FilterBackspace),
                Key::Enter => Some(Action::ApplyFilter),
                Key::Esc => Some(Action::Back),
                _ => None,
            };
        }
        if self.help {
            return match key {
                Key::Char('q') => Some(Action::Quit),
                _ => Some(Action::ToggleHelp),
            };
        }
        if self.meta.source.is_some() {
            let cmd = match key {
                Key::Char(' ') | Key::Char('p') => Some(PlaybackCommand::TogglePlay),
                Key::Char('[') => Some(PlaybackCommand::Step(-1)),
                Key::Char(']') => Some(PlaybackCommand::Step(1)),
                Key::Char('{') => Some(PlaybackCommand::Step(-10)),
                Key::Char('}') => Some(PlaybackCommand::Step(10)),
                Key::Char('+') | Key::Char('=') => Some(PlaybackCommand::Speed(2.0)),
                Key::Char('-') => Some(PlaybackCommand::Speed(0.5)),
                _ => None,
            };
            if let Some(cmd) = cmd {
                return Some(Action::Playback(cmd));
            }
        }
        Some(match key {
            Key::Char('q') => Action::Quit,
            Key::Tab | Key::Right => Action::NextView,
            Key::BackTab | Key::Left => Action::PrevView,
            Key::Char(c @ '1'..='6') => Action::ShowView(View::ALL[c as usize - '1' as usize]),
            Key::Char('l') => Action::ShowView(View::Listeners),
            Key::Up | Key::Char('k') => Action::Move(-1),
            Key::Down | Key::Char('j') => Action::Move(1),
            Key::PageUp | Key::Ctrl('b') => Action::MovePages(-1),
            Key::PageDown | Key::Ctrl('f') | Key::Char(' ') => Action::MovePages(1),
            Key::Home | Key::Char('g') => Action::Top,
            Key::End | Key::Char('G') => Action::Bottom,
            Key::Enter => Action::Enter,
            Key::Esc | Key::Backspace => Action::Back,
            Key::Char('s') => Action::CycleSort,
            Key::Char('/') => Action::StartFilter,
            Key::Char('p') => Action::TogglePause,
            Key::Char('?') | Key::Char('h') => Action::ToggleHelp,
            Key::Char('w') => Action::ToggleGrouping,
            _ => return None,
        })
    }

    /// Applies one action.
    pub fn update(&mut self, action: Action) {
        match action {
            Action::Quit => self.quit = true,
            Action::ShowView(v) => self.show(v),
            Action::NextView => self.show(View::ALL[(self.view.index() + 1) % View::ALL.len()]),
            Action::PrevView => {
                self.show(View::ALL[(self.view.index() + View::ALL.len() - 1) % View::ALL.len()])
            }
            Action::Move(n) => self.move_by(n),
            Action::MovePages(n) => self.move_by(n * self.page_rows() as isize),
            Action::Top => self.move_by(isize::MIN / 2),
            Action::Bottom => self.move_by(isize::MAX / 2),
            Action::Enter => self.enter(),
            Action::Back => self.back(),
            Action::CycleSort => self.cycle_sort(),
            Action::StartFilter => {
                self.filter_input = Some(self.filter.text.clone());
                self.filter_error = None;
            }
            Action::FilterInput(c) => {
                if let Some(s) = &mut self.filter_input {
                    s.push(c);
                }
            }
            Action::FilterBackspace => {
                if let Some(s) = &mut self.filter_input {
                    s.pop();
                }
            }
            Action::ApplyFilter => self.apply_filter(),
            Action::TogglePause => {
                self.paused = !self.paused;
                if !self.paused
                    && let Some(d) = self.held.take()
                {
                    self.take_data(d);
                }
            }
            Action::Playback(cmd) => self.playback_out.push(cmd),
            Action::ToggleHelp => self.help = !self.help,
            Action::ToggleGrouping => {
                self.by_workload = !self.by_workload;
                self.close_wait_drill = None;
                self.close_wait_stack_open = false;
                self.close_wait_paths = ListView::default();
                self.request.close_wait_of = None;
            }
            Action::Resize(w, h) => {
                self.size = (w, h);
                self.ensure_conn_rows();
            }
            Action::Data(d) => {
                if self.paused {
                    self.held = Some(d);
                } else {
                    self.take_data(d);
                }
            }
            Action::Page(mut p) => {
                if p.generation == self.request.generation {
                    if let Some((pid, sockets)) = p.close_wait.take()
                        && let Some(d) = &mut self.data
                    {
                        d.close_wait_sockets = [(pid, sockets)].into();
                    }
                    self.conns = p;
                    self.clamp_conn();
                    self.refresh_lists();
                }
            }
            Action::Fatal(msg) => {
                self.fatal = Some(msg);
                self.quit = true;
            }
        }
    }

    fn show(&mut self, v: View) {
        self.view = v;
        self.help = false;
    }

    fn move_by(&mut self, n: isize) {
        match self.view {
            View::Overview => {}
            // With code paths (`--stacks`), the arrows pick the path.
            View::CloseWait
                if self.close_wait_drill.is_some() && !self.close_wait_paths.rows.is_empty() =>
            {
                self.close_wait_paths.move_by(n)
            }
            View::CloseWait if self.close_wait_drill.is_some() => {
                self.close_wait_sockets.move_by(n)
            }
            View::CloseWait => {
                self.close_wait.move_by(n);
            }
            View::TimeWait => self.time_wait.move_by(n),
            View::Listeners => {
                self.listeners.move_by(n);
                self.listener_focus = self.listener_at(self.listeners.selected);
            }
            View::Connections => {
                self.conn_selected = self.conn_selected.saturating_add_signed(n);
                // Bottom means the true bottom: ask for every matching row.
                if n >= isize::MAX / 2 {
                    self.set_conn_limit(self.conns.matching as usize);
                }
                self.clamp_conn();
                self.ensure_conn_rows();
            }
            View::Histograms => {
                self.hist_selected = self
                    .hist_selected
                    .saturating_add_signed(n)
                    .min(self.hist_keys.len().saturating_sub(1));
            }
        }
    }

    fn clamp_conn(&mut self) {
        self.conn_selected = self
            .conn_selected
            .min(self.conns.rows.len().saturating_sub(1));
    }

    fn set_conn_limit(&mut self, limit: usize) {
        let limit = limit.div_ceil(CONN_ROWS_STEP).max(1) * CONN_ROWS_STEP;
        if limit != self.request.limit {
            self.request.limit = limit;
            self.request.generation += 1;
        }
    }

    /// Asks for more rows when the cursor nears the end of those loaded.
    fn ensure_conn_rows(&mut self) {
        let want = self.conn_selected + 2 * self.page_rows();
        if want > self.request.limit && (self.conns.matching as usize) > self.conns.rows.len() {
            self.set_conn_limit(want);
        }
    }

    fn enter(&mut self) {
        match self.view {
            View::Overview => {}
            View::CloseWait => {
                if self.close_wait_drill.is_some() && !self.close_wait_paths.rows.is_empty() {
                    self.close_wait_stack_open = true;
                } else if self.close_wait_drill.is_none()
                    && !self.by_workload
                    && let Some(d) = &self.data
                    && let Some(&i) = self.close_wait.rows.get(self.close_wait.selected)
                {
                    let pid = d.snap.close_wait_by_process[i].pid;
                    self.close_wait_drill = Some(pid);
                    self.close_wait_sockets.selected = 0;
                    self.close_wait_paths = ListView::default();
                    self.close_wait_stack_open = false;
                    // The engine sends this process's sockets.
                    self.request.close_wait_of = Some(pid);
                    self.request.generation += 1;
                    self.refresh_lists();
                }
            }
            View::TimeWait => {
                if let Some(d) = &self.data
                    && let Some(&i) = self.time_wait.rows.get(self.time_wait.selected)
                {
                    let g = &d.tw_groups[i];
                    // A destination's TIME_WAIT durations are its own; a
                    // service's are its owner's.
                    let key = match (g.side, g.pid) {
                        (data::TwSide::Destination, _) => HistKey::Peer(g.addr, g.port),
                        (data::TwSide::Service, Some(pid)) => HistKey::Process(pid),
                        (data::TwSide::Service, None) => HistKey::All,
                    };
                    self.view = View::Histograms;
                    self.hist_selected = self.hist_keys.iter().position(|k| *k == key).unwrap_or(0);
                }
            }
            View::Connections => self.conn_detail = !self.conns.rows.is_empty(),
            View::Histograms | View::Listeners => {}
        }
    }

    fn back(&mut self) {
        if self.filter_input.take().is_some() {
            self.filter_error = None;
        } else if self.help {
            self.help = false;
        } else if self.view == View::CloseWait && self.close_wait_stack_open {
            self.close_wait_stack_open = false;
        } else if self.view == View::CloseWait && self.close_wait_drill.is_some() {
            self.close_wait_drill = None;
            self.close_wait_paths = ListView::default();
            self.request.close_wait_of = None;
            self.request.generation += 1;
        } else if self.view == View::Connections && self.conn_detail {
            self.conn_detail = false;
        } else if !self.filter.is_empty() {
            self.set_filter(RowFilter::default());
        }
    }

    fn cycle_sort(&mut self) {
        match self.view {
            View::CloseWait => self.close_wait_sort = self.close_wait_sort.next(),
            View::TimeWait => self.time_wait_sort = self.time_wait_sort.next(),
            View::Listeners => self.listener_sort = self.listener_sort.next(),
            View::Connections => {
                self.request.sort = self.request.sort.next();
                self.request.generation += 1;
                self.conn_selected = 0;
            }
            View::Overview | View::Histograms => return,
        }
        self.refresh_lists();
    }

    fn apply_filter(&mut self) {
        let Some(text) = self.filter_input.clone() else {
            return;
        };
        match RowFilter::parse(&text) {
            Ok(f) => {
                self.filter_input = None;
                self.filter_error = None;
                self.set_filter(f);
            }
            Err(e) => self.filter_error = Some(e.0),
        }
    }

    fn set_filter(&mut self, f: RowFilter) {
        self.filter = f.clone();
        self.request.filter = f;
        self.request.generation += 1;
        self.conn_selected = 0;
        self.refresh_lists();
    }

    fn take_data(&mut self, d: Box<TopData>) {
        if d.conns.generation == self.request.generation {
            self.conns = d.conns.clone();
            self.clamp_conn();
        }
        self.data = Some(d);
        self.refresh_lists();
    }

    /// Recomputes the visible rows of every list after new data, a sort or a
    /// filter, keeping each cursor on the same process/peer where possible.
    /// O(processes + peers + the drilled process's sockets), never O(sockets).
    pub fn refresh_lists(&mut self) {
        let Some(d) = &self.data else {
            return;
        };
        let f = &self.filter;
        // The workload of each process, for rows that carry only a pid
        // (built only when a term asks for it).
        let workload_of: std::collections::HashMap<u32, &str> = if f.needs_workload() {
            d.snap
                .by_process
                .iter()
                .filter_map(|p| Some((p.pid?, p.workload.workload.as_deref()?)))
                .chain(
                    d.snap
                        .close_wait_by_process
                        .iter()
                        .filter_map(|p| Some((p.pid?, p.workload.workload.as_deref()?))),
                )
                .collect()
        } else {
            std::collections::HashMap::new()
        };
        let workload_of = |pid: Option<u32>| Some(pid.and_then(|p| workload_of.get(&p).copied()));

        // Workload rows (`w`).
        let cw_workloads = &d.snap.close_wait_by_workload;
        self.close_wait_workloads = (0..cw_workloads.len())
            .filter(|&i| {
                f.matches(&RowView {
                    workload: Some(Some(&cw_workloads[i].workload)),
                    state: Some(crate::model::TcpState::CloseWait),
                    ..RowView::default()
                })
            })
            .collect();
        let tw_workloads = &d.snap.time_wait_by_workload;
        self.time_wait_workloads = (0..tw_workloads.len())
            .filter(|&i| {
                f.matches(&RowView {
                    workload: Some(Some(&tw_workloads[i].workload)),
                    state: Some(crate::model::TcpState::TimeWait),
                    ..RowView::default()
                })
            })
            .collect();

        // CLOSE_WAIT processes.
        let procs = &d.snap.close_wait_by_process;
        let selected_pid = self
            .close_wait
            .rows
            .get(self.close_wait.selected)
            .and_then(|&i| procs.get(i))
            .map(|p| p.pid);
        let mut rows: Vec<usize> = (0..procs.len())
            .filter(|&i| {
                let p = &procs[i];
                f.matches(&RowView {
                    pid: Some(p.pid),
                    comm: Some(p.comm.as_deref()),
                    workload: Some(p.workload.workload.as_deref()),
                    state: Some(crate::model::TcpState::CloseWait),
                    ..RowView::default()
                })
            })
            .collect();
        match self.close_wait_sort {
            CloseWaitSort::Count => rows.sort_by_key(|&i| (Reverse(procs[i].count), procs[i].pid)),
            CloseWaitSort::Growth => rows.sort_by(|&a, &b| {
                procs[b]
                    .growth_per_min
                    .total_cmp(&procs[a].growth_per_min)
                    .then(procs[b].count.cmp(&procs[a].count))
            }),
            CloseWaitSort::Oldest => {
                rows.sort_by_key(|&i| (Reverse(procs[i].oldest_age_ms), procs[i].pid))
            }
        }
        if let Some(pid) = selected_pid
            && let Some(pos) = rows.iter().position(|&i| procs[i].pid == pid)
        {
            self.close_wait.selected = pos;
        }
        self.close_wait.rows = rows;
        self.close_wait.clamp();

        // Sockets of the drilled process.
        let sockets = self
            .close_wait_drill
            .and_then(|pid| d.close_wait_sockets.get(&pid))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let drilled_workload = self
            .close_wait_drill
            .and_then(|pid| procs.iter().find(|p| p.pid == pid))
            .and_then(|p| p.workload.workload.as_deref());
        self.close_wait_sockets.rows = (0..sockets.len())
            .filter(|&i| {
                let s = &sockets[i];
                f.matches(&RowView {
                    pid: Some(s.pid),
                    comm: Some(s.comm.as_deref()),
                    workload: Some(drilled_workload),
                    saddr: Some(s.saddr),
                    sport: Some(s.sport),
                    daddr: Some(s.daddr),
                    dport: Some(s.dport),
                    state: Some(crate::model::TcpState::CloseWait),
                })
            })
            .collect();
        self.close_wait_sockets.clamp();

        // Code paths of the drilled process (`--stacks`): most sockets
        // first, the cursor kept on the same stack.
        let paths = d.snap.close_wait_by_stack.as_deref().unwrap_or_default();
        let selected_path = self
            .close_wait_paths
            .rows
            .get(self.close_wait_paths.selected)
            .and_then(|&i| paths.get(i))
            .map(|r| r.stack_id);
        let mut rows: Vec<usize> = match self.close_wait_drill {
            Some(pid) => (0..paths.len()).filter(|&i| paths[i].pid == pid).collect(),
            None => Vec::new(),
        };
        rows.sort_by_key(|&i| {
            let r = &paths[i];
            (Reverse(r.count), r.stack_id.is_none(), r.stack_id)
        });
        if let Some(id) = selected_path
            && let Some(pos) = rows.iter().position(|&i| paths[i].stack_id == id)
        {
            self.close_wait_paths.selected = pos;
        }
        self.close_wait_paths.rows = rows;
        self.close_wait_paths.clamp();
        if self.close_wait_paths.rows.is_empty() {
            self.close_wait_stack_open = false;
        }

        // TIME_WAIT services and destinations.
        let groups = &d.tw_groups;
        let selected_group = self
            .time_wait
            .rows
            .get(self.time_wait.selected)
            .and_then(|&i| groups.get(i))
            .map(|g| g.key());
        let mut rows: Vec<usize> = (0..groups.len())
            .filter(|&i| {
                let g = &groups[i];
                let comm = g.comm.as_deref();
                let (local, remote) = match g.side {
                    data::TwSide::Service => ((Some(g.addr), Some(g.port)), (None, None)),
                    data::TwSide::Destination => ((None, None), (Some(g.addr), Some(g.port))),
                };
                f.matches(&RowView {
                    pid: Some(g.pid),
                    comm: Some(comm),
                    workload: workload_of(g.pid),
                    saddr: local.0,
                    sport: local.1,
                    daddr: remote.0,
                    dport: remote.1,
                    state: Some(crate::model::TcpState::TimeWait),
                })
            })
            .collect();
        match self.time_wait_sort {
            TimeWaitSort::Count => rows.sort_by_key(|&i| {
                let g = &groups[i];
                (Reverse(g.count), g.addr, g.port)
            }),
            TimeWaitSort::Duration => rows.sort_by(|&a, &b| {
                let p99 = |i: usize| groups[i].duration.map_or(-1.0, |h| h.p99_ms);
                p99(b).total_cmp(&p99(a))
            }),
            TimeWaitSort::Peer => rows.sort_by_key(|&i| (groups[i].addr, groups[i].port)),
        }
        if let Some(key) = selected_group
            && let Some(pos) = rows.iter().position(|&i| groups[i].key() == key)
        {
            self.time_wait.selected = pos;
        }
        self.time_wait.rows = rows;
        self.time_wait.clamp();

        // Histogram subjects.
        let selected_key = self.hist_keys.get(self.hist_selected).copied();
        let mut keys = vec![HistKey::All];
        keys.extend(
            d.hists_by_process
                .iter()
                .filter(|k| {
                    f.matches(&RowView {
                        pid: Some(k.pid),
                        comm: Some(k.comm.as_deref()),
                        workload: workload_of(k.pid),
                        ..RowView::default()
                    })
                })
                .filter_map(|k| k.pid.map(HistKey::Process)),
        );
        keys.extend(
            d.hists_by_peer
                .iter()
                .filter(|k| {
                    f.matches(&RowView {
                        daddr: k.daddr,
                        dport: k.dport,
                        ..RowView::default()
                    })
                })
                .filter_map(|k| Some(HistKey::Peer(k.daddr?, k.dport?))),
        );
        self.hist_selected = selected_key
            .and_then(|k| keys.iter().position(|x| *x == k))
            .unwrap_or(0);
        self.hist_keys = keys;

        self.refresh_listeners();
    }

    /// The Listeners view's rows: filtered (a listener is a LISTEN socket:
    /// its address and port are local), sorted, the cursor kept on the same
    /// listener. O(listeners log listeners).
    fn refresh_listeners(&mut self) {
        let Some(d) = &self.data else {
            return;
        };
        let all = d.listeners();
        let key = |i: usize| listener_id(&all[i]);
        let f = &self.filter;
        let mut rows: Vec<usize> = (0..all.len())
            .filter(|&i| {
                let r = &all[i];
                f.matches(&RowView {
                    pid: Some(r.pid),
                    comm: Some(r.comm.as_deref()),
                    workload: Some(r.workload.workload.as_deref()),
                    saddr: r.addr.parse().ok(),
                    sport: Some(r.port),
                    state: Some(crate::model::TcpState::Listen),
                    ..RowView::default()
                })
            })
            .collect();
        match self.listener_sort {
            ListenerSort::Drops => rows.sort_by(|&a, &b| {
                let (x, y) = (&all[a], &all[b]);
                y.drops_per_sec
                    .total_cmp(&x.drops_per_sec)
                    .then(y.drops_total.cmp(&x.drops_total))
                    .then_with(|| key(a).cmp(&key(b)))
            }),
            ListenerSort::Queue => rows.sort_by(|&a, &b| {
                let fill = |i: usize| {
                    let r = &all[i];
                    f64::from(r.accept_queue) / f64::from(r.accept_queue_limit.max(1))
                };
                fill(b)
                    .total_cmp(&fill(a))
                    .then(all[b].accept_queue.cmp(&all[a].accept_queue))
                    .then_with(|| key(a).cmp(&key(b)))
            }),
            ListenerSort::Endpoint => rows.sort_by_key(|&i| key(i)),
        }
        if let Some(k) = self.listener_focus
            && let Some(pos) = rows.iter().position(|&i| key(i) == k)
        {
            self.listeners.selected = pos;
        }
        self.listeners.rows = rows;
        self.listeners.clamp();
    }

    /// The listener at row `pos` of the view.
    fn listener_at(&self, pos: usize) -> Option<ListenerId> {
        let d = self.data.as_ref()?;
        let &i = self.listeners.rows.get(pos)?;
        d.listeners().get(i).map(listener_id)
    }

    /// The histograms of the selected subject, by kind, with its label.
    pub fn selected_histograms(&self) -> (String, Vec<(HistKind, crate::stats::HistSummary)>) {
        let Some(d) = &self.data else {
            return ("all".into(), Vec::new());
        };
        let key = self
            .hist_keys
            .get(self.hist_selected)
            .copied()
            .unwrap_or_default();
        let from_map = |m: &std::collections::BTreeMap<&'static str, crate::stats::HistSummary>| {
            HistKind::ALL
                .iter()
                .map(|k| (*k, m.get(k.name()).copied().unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        match key {
            HistKey::All => ("all connections".into(), from_map(&d.snap.histograms)),
            HistKey::Process(pid) => {
                let k = d.hists_by_process.iter().find(|k| k.pid == Some(pid));
                (
                    format!(
                        "process {pid} {}",
                        k.and_then(|k| k.comm.clone()).unwrap_or_default()
                    ),
                    k.map(|k| from_map(&k.histograms)).unwrap_or_default(),
                )
            }
            HistKey::Peer(ip, port) => {
                let k = d
                    .hists_by_peer
                    .iter()
                    .find(|k| k.daddr == Some(ip) && k.dport == Some(port));
                (
                    format!("peer {}", std::net::SocketAddr::new(ip, port)),
                    k.map(|k| from_map(&k.histograms)).unwrap_or_default(),
                )
            }
        }
    }
}

fn listener_id(r: &crate::listeners::ListenerRow) -> ListenerId {
    (r.addr.parse().ok(), r.port, r.netns)
}

/// What a code path's `stack_quality` means, for a note under it (None:
/// complete, nothing to say).
pub fn quality_note(quality: &str) -> Option<&'static str> {
    Some(match quality {
        "cut" => "frames stop here: the code below has no frame pointers (or is JIT code)",
        "truncated" => "the kernel's depth limit cut the outermost callers",
        "no_frame_pointers" => "one frame only: its callers keep no frame pointers",
        "process_gone" => "the process was gone before its stack was named: addresses only",
        "unsymbolized" => "naming failed: addresses only",
        "pending" => "not named yet",
        "none" => "no stack: opened before tracing, or the kernel missed it",
        _ => return None,
    })
}

#[cfg(any(test, feature = "test-fixtures"))]
pub mod fixture;
#[cfg(test)]
mod tests;
