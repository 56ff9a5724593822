//! The benchmark harness in its quick mode (one repetition, pgpilot only, short durations):
//! every scenario must produce a number. How big the numbers are is BENCHMARKS.md's business,
//! never a test's.

use pgpilot_e2e::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn every_benchmark_scenario_produces_a_number() {
    if !prerequisites() {
        return;
    }
    // `tmux -V` prints the version; `tmux -v` would start a client with debug logs
    if !need_program("wrk", "wrk") || !need_program("tmux", "tmux") {
        return;
    }
    let out_path =
        std::env::temp_dir().join(format!("pgpilot-bench-quick-{}.log", std::process::id()));
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(bin_dir().join("bench"))
        .arg("quick")
        .stdout(out)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run `cargo build` first: the bench binary is missing");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(600) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench quick ran for more than 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&out_path).unwrap();
    let _ = std::fs::remove_file(&out_path);
    assert!(status.success(), "bench quick failed:\n{text}");
    let doc: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON document in:\n{text}"));
    for key in [
        "/basics/pgpilot/bootstrap_s/median",
        "/basics/pgpilot/rest_primary_rps/median",
        "/basics/pgpilot/idle_cpu_pct/median",
        "/switchover/pgpilot/write_gap_s/median",
        "/failures/pgpilot/machine_loss_fastest_s/median",
        "/failures/pgpilot/postmaster_crash_s/median",
        "/split/pgpilot/agent_sigkill/split_brain_s/median",
        "/split/pgpilot/strict_sync_failover/lost_acknowledged/median",
        "/console/console_list_ms/median",
        "/console/frame_ms_1000_members",
        "/console/change_to_screen_ms",
    ] {
        assert!(
            doc.pointer(key).and_then(Value::as_f64).is_some(),
            "{key} in {doc}"
        );
    }
}
