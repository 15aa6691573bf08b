//! The official `openai` Python SDK against `genie serve` (gateway/tests/e2e/openai_sdk.py).
//! `.ci/run` installs the SDK; elsewhere the test says it is skipped when the SDK is
//! missing, and fails instead when `CI` is set.

mod support;

use support::{Server, MODEL};

#[test]
fn the_openai_python_sdk_works_against_genie_serve() {
    let has_sdk = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        assert!(
            std::env::var_os("CI").is_none(),
            "the openai Python package is required in CI (python3 -m pip install openai)"
        );
        eprintln!(
            "SKIPPED: the openai Python package is not installed (python3 -m pip install openai)"
        );
        return;
    }
    let key = "sk-genie-e2e";
    let s = Server::start(
        &["--threads", "1", "--api-key", key],
        &[
            ("GENIE_LIMITS__MAX_WAITING", "16"),
            ("GENIE_LIMITS__MAX_N", "32"),
        ],
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/openai_sdk.py");
    let out = std::process::Command::new("python3")
        .args([script, &s.url, key, MODEL])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("checks passed"));
}
