//! JSON summaries with bounded lists. A host with 22,000 TIME_WAIT peers
//! made `stats --json` lines of 2 MB; like the metrics, each list keeps its
//! largest rows and folds the rest into one `other` row that carries their
//! true totals, so sums over a list still add up to the host's numbers.
//!
//! The `other` row is `{"other": true, "rows": K, ...}` with the folded
//! rows' `count`/`total` and per-state counts summed, ages (`*age_ms`) as
//! their maximum and histogram counts summed. When anything was folded,
//! `capped` names each folded list with its `rows` (all of them) and
//! `shown` (kept as rows).

use serde_json::{Map, Value};

/// Rows kept per list before the `other` row.
pub const JSON_ROWS: usize = 50;
/// CLOSE_WAIT sockets listed one by one (oldest first) before the `other` row.
pub const JSON_CLOSE_WAIT_SOCKETS: usize = 100;

/// The lists of a `stats` snapshot (and of a `report`) and how many rows
/// each keeps.
const LISTS: [(&str, usize); 16] = [
    ("close_wait", JSON_CLOSE_WAIT_SOCKETS),
    ("close_wait_by_process", JSON_ROWS),
    ("time_wait_by_peer", JSON_ROWS),
    ("time_wait_by_service", JSON_ROWS),
    ("time_wait_by_local", JSON_ROWS),
    ("port_budgets", JSON_ROWS),
    ("by_process", JSON_ROWS),
    ("by_local_port", JSON_ROWS),
    ("by_remote", JSON_ROWS),
    ("histograms_by", JSON_ROWS),
    ("close_wait_workload_holders", JSON_ROWS),
    ("close_wait_by_workload", JSON_ROWS),
    ("time_wait_by_workload", JSON_ROWS),
    ("by_workload", JSON_ROWS),
    ("close_wait_by_stack", JSON_ROWS),
    ("listeners", JSON_ROWS),
];

/// Row fields that add up across rows (the rest are dropped when folded).
const SUMMED: [&str; 7] = [
    "count",
    "total",
    "time_wait",
    "reusable",
    "open",
    "clients",
    "drops_total",
];

fn add_u64(into: &mut Map<String, Value>, key: &str, v: u64, max: bool) {
    let slot = into.entry(key.to_string()).or_insert(Value::from(0u64));
    let old = slot.as_u64().unwrap_or(0);
    *slot = Value::from(if max {
        old.max(v)
    } else {
        old.saturating_add(v)
    });
}

/// Folds `row` into `other`: counts summed, ages maxed, histogram counts
/// summed; everything else (names, addresses, percentiles) dropped.
fn fold(other: &mut Map<String, Value>, row: &Map<String, Value>, in_states: bool) {
    for (k, v) in row {
        match v {
            Value::Number(n) => {
                let Some(n) = n.as_u64() else { continue };
                if k.ends_with("age_ms") {
                    add_u64(other, k, n, true);
                } else if in_states || SUMMED.contains(&k.as_str()) {
                    add_u64(other, k, n, false);
                }
            }
            Value::Object(inner) if k == "states" => {
                let Value::Object(into) = other
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                else {
                    continue;
                };
                fold(into, inner, true);
            }
            Value::Object(hists) if k == "histograms" => {
                let Value::Object(into) = other
                    .entry(k.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                else {
                    continue;
                };
                for (name, h) in hists {
                    let count = h.get("count").and_then(Value::as_u64).unwrap_or(0);
                    if let Value::Object(slot) = into
                        .entry(name.clone())
                        .or_insert_with(|| Value::Object(Map::new()))
                    {
                        add_u64(slot, "count", count, false);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Caps every list of a serialized snapshot or report in place. A
/// snapshot lists only the oldest CLOSE_WAIT sockets and says how many it
/// left out (`close_wait_unlisted`, taken out here): they count in the
/// `other` row and in `capped`, as if listed.
pub fn cap_lists(summary: &mut Value) {
    let Value::Object(top) = summary else { return };
    let unlisted = top
        .remove("close_wait_unlisted")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let mut capped = Map::new();
    for (name, keep) in LISTS {
        let Some(Value::Array(rows)) = top.get_mut(name) else {
            continue;
        };
        if rows.len() <= keep {
            continue;
        }
        let all = rows.len()
            + if name == "close_wait" {
                unlisted as usize
            } else {
                0
            };
        let mut other = Map::new();
        other.insert("other".into(), Value::Bool(true));
        other.insert("rows".into(), Value::from((all - keep) as u64));
        for row in rows.drain(keep..) {
            if let Value::Object(row) = row {
                fold(&mut other, &row, false);
            }
        }
        rows.push(Value::Object(other));
        capped.insert(
            name.into(),
            serde_json::json!({ "rows": all, "shown": keep }),
        );
    }
    if !capped.is_empty() {
        top.insert("capped".into(), Value::Object(capped));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_long_list_keeps_its_largest_rows_and_the_true_totals() {
        let peers: Vec<Value> = (0..120u64)
            .map(|i| json!({"daddr": format!("10.0.0.{i}"), "dport": 80, "count": 200 - i, "port_range_ratio": 0.1}))
            .collect();
        let total: u64 = (0..120u64).map(|i| 200 - i).sum();
        let mut v = json!({"time_wait_by_peer": peers, "states": {"TIME_WAIT": total}});
        cap_lists(&mut v);
        let rows = v["time_wait_by_peer"].as_array().unwrap();
        assert_eq!(rows.len(), JSON_ROWS + 1);
        assert_eq!(rows[0]["count"], 200);
        let other = &rows[JSON_ROWS];
        assert_eq!(other["other"], true);
        assert_eq!(other["rows"], 70);
        assert!(other.get("daddr").is_none());
        let sum: u64 = rows.iter().map(|r| r["count"].as_u64().unwrap()).sum();
        assert_eq!(sum, total);
        assert_eq!(
            v["capped"]["time_wait_by_peer"],
            json!({"rows": 120, "shown": JSON_ROWS})
        );
        // Lists that fit are untouched and not named.
        assert!(v["capped"].get("states").is_none());
    }

    #[test]
    fn states_are_summed_and_ages_are_the_oldest() {
        let procs: Vec<Value> = (0..60u64)
            .map(|i| json!({"pid": i, "comm": "x", "total": 2, "states": {"CLOSE_WAIT": 2}, "oldest_age_ms": i * 10}))
            .collect();
        let mut v = json!({ "by_process": procs });
        cap_lists(&mut v);
        let other = &v["by_process"][JSON_ROWS];
        assert_eq!(other["total"], 20);
        assert_eq!(other["states"]["CLOSE_WAIT"], 20);
        assert_eq!(other["oldest_age_ms"], 590);
        assert!(other.get("pid").is_none());
    }

    /// A snapshot lists the oldest 101 CLOSE_WAIT sockets and counts the
    /// rest: capped, it prints what the whole list would have printed.
    #[test]
    fn close_wait_sockets_left_out_count_as_if_listed() {
        let socket = |i: u64| json!({"pid": 7, "comm": "db", "sport": 5432, "age_ms": 10_000 - i});
        let mut whole = json!({"close_wait": (0..150).map(socket).collect::<Vec<_>>()});
        let mut listed = json!({
            "close_wait": (0..JSON_CLOSE_WAIT_SOCKETS as u64 + 1).map(socket).collect::<Vec<_>>(),
            "close_wait_unlisted": 150 - JSON_CLOSE_WAIT_SOCKETS - 1,
        });
        cap_lists(&mut whole);
        cap_lists(&mut listed);
        assert_eq!(listed, whole);
        assert_eq!(listed["capped"]["close_wait"]["rows"], 150);
        assert_eq!(listed["close_wait"][JSON_CLOSE_WAIT_SOCKETS]["rows"], 50);
    }

    #[test]
    fn a_short_summary_is_unchanged() {
        let mut v = json!({"close_wait": [{"age_ms": 1}], "ts_ns": 5});
        let before = v.clone();
        cap_lists(&mut v);
        assert_eq!(v, before);
    }
}
