//! The Prometheus alerting rules shipped in `packaging/kubernetes/` are what
//! the README promises: valid for Debian's own `promtool` (`check rules` on
//! the rule file and on the PrometheusRule's copy, `test rules` on the unit
//! tests), the PrometheusRule's `spec` identical to the rule file, only
//! metrics tcptrace exports, and `watch`'s default thresholds with its 80%
//! hysteresis. Fails (never skips) when promtool is missing: `cargo xtask
//! setup` installs it (Debian's `prometheus` package).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tcptrace_core::{
    alerts::{CLEAR_RATIO, QUIET, Rules},
    metrics::Exposition,
};

const RULES: &str = "tcptrace-rules.yml";
const RULE_TESTS: &str = "tcptrace-rules.test.yml";
const PROMETHEUS_RULE: &str = "prometheus-rules.yaml";

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes")
}

fn read(name: &str) -> String {
    let path = kubernetes_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Debian's promtool, from PATH.
fn promtool() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("promtool"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "promtool is not on PATH: it comes with Debian's prometheus package; run `cargo xtask setup` (or apt-get install prometheus)"
            )
        })
}

/// Runs `promtool ARGS` in `dir`; panics with its output unless it succeeds.
fn promtool_ok(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(promtool())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("start promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn promtool_checks_the_rule_file() {
    let out = promtool_ok(&kubernetes_dir(), &["check", "rules", RULES]);
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
}

#[test]
fn promtool_unit_tests_of_the_rules_pass() {
    let out = promtool_ok(&kubernetes_dir(), &["test", "rules", RULE_TESTS]);
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The PrometheusRule's `spec`, indented two spaces, back at column 0.
fn prometheus_rule_spec() -> String {
    let text = read(PROMETHEUS_RULE);
    let (_, spec) = text
        .split_once("\nspec:\n")
        .expect("prometheus-rules.yaml has a top-level `spec:`");
    spec.lines()
        .map(|line| {
            assert!(
                line.is_empty() || line.starts_with("  "),
                "not under spec: {line:?}"
            );
            format!("{}\n", line.get(2..).unwrap_or(""))
        })
        .collect()
}

#[test]
fn the_prometheus_rule_is_the_rule_file() {
    let rules = read(RULES);
    let groups = &rules[rules.find("\ngroups:\n").expect("a groups: key") + 1..];
    let spec = prometheus_rule_spec();
    assert!(
        spec == groups,
        "the spec of {PROMETHEUS_RULE} differs from the groups of {RULES}: copy them over (indented by two spaces)"
    );
    // And promtool reads that copy as it reads the file.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("prometheus_rules");
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("spec.yml"), &spec).expect("write spec.yml");
    let out = promtool_ok(&dir, &["check", "rules", "spec.yml"]);
    assert!(out.contains("SUCCESS: 11 rules found"), "{out}");
}

#[test]
fn the_rules_use_only_metrics_tcptrace_exports() {
    // Every family the metrics endpoint describes, with the sample names
    // Prometheus stores (counters get `_total`, histograms three more).
    let exposition = Exposition::default().render();
    let mut exported: Vec<String> = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => exported.push(format!("{name}_total")),
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.push(format!("{name}{suffix}"));
                }
            }
            _ => exported.push(name.to_owned()),
        }
    }
    assert!(
        exported.iter().any(|n| n == "tcptrace_close_wait_sockets"),
        "{exposition}"
    );
    let rules = read(RULES);
    let mut used = Vec::new();
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = rest.find("tcptrace_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            // `tcptrace_rule` is the rules' own label, not a metric.
            if name != "tcptrace_rule" {
                used.push(name);
            }
        }
    }
    assert!(used.len() >= 7, "{used:?}");
    for name in used {
        assert!(
            exported.contains(&name),
            "{RULES} uses {name}, which tcptrace does not export (exported: {exported:?})"
        );
    }
}

/// A threshold as PromQL writes it: 100, 0.4, 8.
fn num(v: f64) -> String {
    format!("{}", (v * 1e6).round() / 1e6)
}

#[test]
fn the_thresholds_are_watchs_defaults() {
    let r = Rules::default();
    let rules = read(RULES);
    let hysteresis = |series: &str, threshold: f64| {
        for expr in [
            format!("{series} >= {}", num(threshold)),
            format!("{series} >= {}", num(threshold * CLEAR_RATIO)),
        ] {
            assert!(rules.contains(&expr), "{RULES} lacks `{expr}`");
        }
    };
    hysteresis(
        r#"tcptrace_close_wait_sockets{pid!="other"}"#,
        r.close_wait_per_process as f64,
    );
    hysteresis(
        r#"sum by (instance) (tcptrace_connections{state="CLOSE_WAIT"})"#,
        r.close_wait_host as f64,
    );
    hysteresis(
        &format!(
            r#"tcptrace_close_wait_growth_per_minute{{window="{}m", pid!="other"}}"#,
            r.close_wait_growth_window_min
        ),
        r.close_wait_growth_per_min,
    );
    hysteresis(
        r#"tcptrace_close_wait_oldest_seconds{pid!="other"}"#,
        r.close_wait_oldest_secs as f64,
    );
    hysteresis(
        r#"tcptrace_workload_close_wait_sockets{workload!="other"}"#,
        r.close_wait_per_process as f64,
    );
    hysteresis(
        r#"tcptrace_workload_close_wait_oldest_seconds{workload!="other"}"#,
        r.close_wait_oldest_secs as f64,
    );
    hysteresis(
        &format!(
            r#"tcptrace_workload_close_wait_growth_per_minute{{window="{}m", workload!="other"}}"#,
            r.close_wait_growth_window_min
        ),
        r.close_wait_growth_per_min,
    );
    hysteresis("tcptrace_ephemeral_port_use_ratio", r.time_wait_port_share);
    hysteresis(
        r#"sum by (instance, listener, netns) (rate(tcptrace_listen_drops_total{listener!~"other|none"}[1m]))"#,
        r.listen_drops_per_sec,
    );
    // Counter rules hold while the counter rose within watch's quiet time.
    let quiet = format!("{}m", QUIET.as_secs() / 60);
    assert!(r.time_wait_overflow);
    let overflow = format!("expr: increase(tcptrace_time_wait_overflow_total[{quiet}]) > 0");
    assert!(rules.contains(&overflow), "{RULES} lacks `{overflow}`");
    // lost_events = 1: any loss within the minute.
    assert_eq!(r.lost_events, 1);
    let lost =
        format!("expr: sum by (instance) (increase(tcptrace_lost_events_total[{quiet}])) > 0");
    assert!(rules.contains(&lost), "{RULES} lacks `{lost}`");
}
