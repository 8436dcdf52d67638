//! The `/` filter of `tcptrace top`: a line of terms typed by the user,
//! parsed once into a predicate over rows (connections, CLOSE_WAIT sockets,
//! processes, peers). Pure: no terminal types.
//!
//! Syntax: space-separated terms, all of which must match.
//! - `port:N` (either side), `lport:N`, `rport:N`
//! - `pid:N`, `comm:TEXT` (substring of the process name)
//! - `workload:TEXT` (or `wl:`; substring of the workload as shown:
//!   `payments.service`, `docker/web-1`, `shop/payments-7d9f-abcde/app`)
//! - `addr:TEXT` (prefix of either address as printed, e.g. `10.1.` or `::1`)
//! - `state:S` (`CLOSE_WAIT`, `close-wait`, `time_wait`...)
//! - a bare term is guessed: a number is a port, an IP address is an
//!   address, a state name is a state, anything else is a name: a
//!   substring of the process name or of the workload.
//!
//! `=` works in place of `:`. A term about a field a row does not have (a
//! port, for a process row) does not exclude that row.

use std::{fmt, net::IpAddr};

use crate::model::TcpState;

/// One condition of a filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Term {
    Port(u16),
    LocalPort(u16),
    RemotePort(u16),
    Pid(u32),
    Comm(String),
    /// A substring of the workload's name.
    Workload(String),
    /// A bare word: a substring of the process name or of the workload.
    Name(String),
    Addr(String),
    State(TcpState),
}

/// A parsed filter; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowFilter {
    pub text: String,
    pub terms: Vec<Term>,
}

/// What a row offers to the filter; `None` fields are not tested.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowView<'a> {
    pub pid: Option<Option<u32>>,
    pub comm: Option<Option<&'a str>>,
    /// The owner's workload as shown (`Some(None)`: not known).
    pub workload: Option<Option<&'a str>>,
    pub saddr: Option<IpAddr>,
    pub sport: Option<u16>,
    pub daddr: Option<IpAddr>,
    pub dport: Option<u16>,
    pub state: Option<TcpState>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterError(pub String);

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn number<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, FilterError> {
    v.parse()
        .map_err(|_| FilterError(format!("'{key}:{v}': {key} needs a number")))
}

fn state(v: &str) -> Result<TcpState, FilterError> {
    TcpState::parse(v).ok_or_else(|| {
        FilterError(format!(
            "unknown state '{v}': use e.g. CLOSE_WAIT, TIME_WAIT, ESTABLISHED"
        ))
    })
}

fn term(raw: &str) -> Result<Term, FilterError> {
    if let Some((key, v)) = raw.split_once([':', '=']) {
        // "::1" and "fe80::1" are addresses, not key:value.
        if !key.is_empty() && raw.parse::<IpAddr>().is_err() {
            if v.is_empty() {
                return Err(FilterError(format!("'{raw}': give a value after '{key}:'")));
            }
            return Ok(match key.to_ascii_lowercase().as_str() {
                "port" => Term::Port(number(key, v)?),
                "lport" | "sport" => Term::LocalPort(number(key, v)?),
                "rport" | "dport" => Term::RemotePort(number(key, v)?),
                "pid" => Term::Pid(number(key, v)?),
                "comm" | "proc" | "process" => Term::Comm(v.to_string()),
                "workload" | "wl" => Term::Workload(v.to_string()),
                "addr" | "ip" | "host" => Term::Addr(v.to_string()),
                "state" => Term::State(state(v)?),
                other => {
                    return Err(FilterError(format!(
                        "unknown filter key '{other}': use port, lport, rport, pid, comm, workload, addr or state"
                    )));
                }
            });
        }
    }
    if let Ok(p) = raw.parse::<u16>() {
        return Ok(Term::Port(p));
    }
    if raw.parse::<IpAddr>().is_ok() {
        return Ok(Term::Addr(raw.to_string()));
    }
    if let Some(s) = TcpState::parse(raw) {
        return Ok(Term::State(s));
    }
    Ok(Term::Name(raw.to_string()))
}

fn addr_matches(addr: Option<IpAddr>, prefix: &str) -> bool {
    addr.is_some_and(|a| a.to_string().starts_with(prefix))
}

impl RowFilter {
    pub fn parse(text: &str) -> Result<Self, FilterError> {
        let terms = text
            .split_whitespace()
            .map(term)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.trim().to_string(),
            terms,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether a term tests the process name.
    pub fn needs_comm(&self) -> bool {
        self.terms
            .iter()
            .any(|t| matches!(t, Term::Comm(_) | Term::Name(_)))
    }

    /// Whether a term tests the workload.
    pub fn needs_workload(&self) -> bool {
        self.terms
            .iter()
            .any(|t| matches!(t, Term::Workload(_) | Term::Name(_)))
    }

    pub fn matches(&self, r: &RowView<'_>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Port(p) => {
                (r.sport.is_none() && r.dport.is_none())
                    || r.sport == Some(*p)
                    || r.dport == Some(*p)
            }
            Term::LocalPort(p) => r.sport.is_none_or(|s| s == *p),
            Term::RemotePort(p) => r.dport.is_none_or(|d| d == *p),
            Term::Pid(p) => r.pid.is_none_or(|pid| pid == Some(*p)),
            Term::Comm(c) => r
                .comm
                .is_none_or(|comm| comm.is_some_and(|comm| comm.contains(c.as_str()))),
            Term::Workload(w) => r
                .workload
                .is_none_or(|wl| wl.is_some_and(|wl| wl.contains(w.as_str()))),
            Term::Name(n) => {
                let has =
                    |f: Option<Option<&str>>| f.flatten().is_some_and(|v| v.contains(n.as_str()));
                (r.comm.is_none() && r.workload.is_none()) || has(r.comm) || has(r.workload)
            }
            Term::Addr(a) => {
                (r.saddr.is_none() && r.daddr.is_none())
                    || addr_matches(r.saddr, a)
                    || addr_matches(r.daddr, a)
            }
            Term::State(s) => r.state.is_none_or(|st| st == *s),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn conn_row(pid: u32, comm: &str, sport: u16, dport: u16, state: TcpState) -> RowView<'_> {
        RowView {
            pid: Some(Some(pid)),
            comm: Some(Some(comm)),
            workload: Some(Some("payments.service")),
            saddr: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            sport: Some(sport),
            daddr: Some(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7))),
            dport: Some(dport),
            state: Some(state),
        }
    }

    #[test]
    fn bare_terms_are_guessed() {
        let f = RowFilter::parse("5432 close-wait 192.168.1.7 java").unwrap();
        assert_eq!(
            f.terms,
            vec![
                Term::Port(5432),
                Term::State(TcpState::CloseWait),
                Term::Addr("192.168.1.7".into()),
                Term::Name("java".into())
            ]
        );
        assert!(RowFilter::parse("::1").unwrap().terms == vec![Term::Addr("::1".into())]);
        assert_eq!(
            RowFilter::parse("comm:java workload:shop/").unwrap().terms,
            vec![Term::Comm("java".into()), Term::Workload("shop/".into())]
        );
    }

    #[test]
    fn keyed_terms_and_all_must_match() {
        let f = RowFilter::parse("pid=42 rport:5432 addr:192.168.").unwrap();
        assert!(f.matches(&conn_row(42, "java", 40000, 5432, TcpState::CloseWait)));
        assert!(!f.matches(&conn_row(43, "java", 40000, 5432, TcpState::CloseWait)));
        assert!(!f.matches(&conn_row(42, "java", 5432, 40000, TcpState::CloseWait)));
        assert!(RowFilter::default().matches(&conn_row(1, "x", 1, 2, TcpState::Listen)));
    }

    #[test]
    fn terms_about_absent_fields_do_not_exclude() {
        let process_row = RowView {
            pid: Some(Some(42)),
            comm: Some(Some("java")),
            ..RowView::default()
        };
        assert!(
            RowFilter::parse("port:5432 java")
                .unwrap()
                .matches(&process_row)
        );
        assert!(!RowFilter::parse("nginx").unwrap().matches(&process_row));
        let ownerless = RowView {
            pid: Some(None),
            comm: Some(None),
            ..RowView::default()
        };
        assert!(!RowFilter::parse("pid:1").unwrap().matches(&ownerless));
    }

    #[test]
    fn the_workload_text_matches_too() {
        let row = conn_row(42, "java", 40000, 5432, TcpState::CloseWait);
        // A bare word: the process name or the workload.
        assert!(RowFilter::parse("payments").unwrap().matches(&row));
        assert!(RowFilter::parse("java").unwrap().matches(&row));
        assert!(!RowFilter::parse("nginx").unwrap().matches(&row));
        // Keyed: only that field.
        assert!(
            RowFilter::parse("workload:payments.service")
                .unwrap()
                .matches(&row)
        );
        assert!(RowFilter::parse("wl:.service").unwrap().matches(&row));
        assert!(!RowFilter::parse("workload:java").unwrap().matches(&row));
        assert!(!RowFilter::parse("comm:payments").unwrap().matches(&row));
        // A workload row (no process name) is found by its name.
        let workload_row = RowView {
            workload: Some(Some("shop/payments-7d9f-abcde/app")),
            state: Some(TcpState::CloseWait),
            ..RowView::default()
        };
        assert!(
            RowFilter::parse("shop/ close-wait")
                .unwrap()
                .matches(&workload_row)
        );
        assert!(!RowFilter::parse("docker/").unwrap().matches(&workload_row));
        assert!(RowFilter::parse("pid:42").unwrap().matches(&workload_row));
        // The owner's workload not known: a workload term excludes it.
        let unknown = RowView {
            comm: Some(Some("java")),
            workload: Some(None),
            ..RowView::default()
        };
        assert!(!RowFilter::parse("workload:x").unwrap().matches(&unknown));
        assert!(RowFilter::parse("jav").unwrap().matches(&unknown));
        assert!(RowFilter::parse("payments").unwrap().needs_workload());
        assert!(!RowFilter::parse("pid:1 comm:x").unwrap().needs_workload());
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(
            RowFilter::parse("port:http")
                .unwrap_err()
                .0
                .contains("needs a number")
        );
        assert!(
            RowFilter::parse("colour:red")
                .unwrap_err()
                .0
                .contains("unknown filter key")
        );
        assert!(
            RowFilter::parse("state:nope")
                .unwrap_err()
                .0
                .contains("unknown state")
        );
    }
}
