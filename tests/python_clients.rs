//! README scenario "a plain WebSocket connector": a Python `websockets`
//! connector and browser speak seed 001 through the real gateway; the
//! connector streams Arrow IPC made by pyarrow and the browser decodes it
//! with pyarrow and compares it with the source table.

mod common;

use std::process::Command;

use common::*;

#[test]
fn python_websockets_connector_and_browser_with_pyarrow() {
    let probe = Command::new("python3")
        .args(["-c", "import websockets, pyarrow"])
        .output()
        .expect("python3 is required for this test (install Python 3)");
    assert!(
        probe.status.success(),
        "this test needs the Python packages `websockets` and `pyarrow` \
         (pip install websockets pyarrow; .ci/run installs them): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    for shards in [1, 2] {
        let gw = Gateway::start(shards, &[]);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/seed001_pair.py");
        let out = Command::new("python3")
            .args([
                script,
                "--gateway",
                &gw.url(""),
                "--secret",
                SECRET,
                "--edge",
                EDGE,
                "--edge-key",
                EDGE_KEY,
            ])
            .output()
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "python clients failed ({shards} shards):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
    }
}
