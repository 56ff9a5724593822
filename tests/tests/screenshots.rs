//! `screenshots/make.sh` runs against a live demo cluster and writes one PNG per scene: a real
//! picture of the console (PNG signature, the size of a 120x32 terminal, more than one colour).

use pgpilot_e2e::*;
use std::process::Command;

#[test]
fn the_screenshot_script_makes_every_picture() {
    if !prerequisites() || !need_program("tmux", "tmux") {
        return;
    }
    let out = tempfile::tempdir_in("/var/tmp").unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../screenshots/make.sh");
    let run = Command::new("bash")
        .arg(&script)
        .arg(out.path())
        .env("PGPILOT_BIN_DIR", bin_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    for scene in [
        "cluster-list",
        "switchover",
        "failover",
        "history",
        "events",
        "journal",
    ] {
        let path = out.path().join(format!("{scene}.png"));
        let png = std::fs::read(&path).unwrap_or_else(|e| panic!("{scene}: {e}\n{stdout}"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{scene}");
        let pixmap = resvg::tiny_skia::Pixmap::decode_png(&png).unwrap();
        assert!(
            pixmap.width() > 1000 && pixmap.height() > 500,
            "{scene}: {}x{}",
            pixmap.width(),
            pixmap.height()
        );
        let first = pixmap.pixels()[0];
        let other = pixmap.pixels().iter().filter(|p| **p != first).count();
        assert!(
            other > 5_000,
            "{scene}: only {other} pixels differ from the background"
        );
    }
    // the demo it started is gone
    let pid: String = stdout
        .split("pgpilot-shots-")
        .nth(1)
        .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default();
    assert!(!pid.is_empty(), "{stdout}");
    assert!(!std::path::Path::new(&format!("/var/tmp/pgpilot-shots-{pid}")).exists());
}
