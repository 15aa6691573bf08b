//! Structured outputs and tool calls through the clients applications use
//! (tests/e2e/clients.py): the official `openai` SDK's parse() and tool calls, instructor
//! (TOOLS and JSON_SCHEMA modes) and LangChain's `with_structured_output` (json_schema and
//! function_calling), against `genie serve`. `.ci/run` installs them, pinned; elsewhere
//! the test says it is skipped when one is missing, and fails instead when `CI` is set.

mod support;

use support::{Server, MODEL};

#[test]
fn instructor_langchain_and_the_openai_sdk_get_valid_structured_answers() {
    let has = std::process::Command::new("python3")
        .args(["-c", "import openai, instructor, langchain_openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var_os("CI").is_none(),
            "openai, instructor and langchain-openai are required in CI (.ci/run installs them)"
        );
        eprintln!("SKIPPED: python3 -m pip install openai==3.3.0 instructor==1.17.0 langchain-openai==1.8.1");
        return;
    }
    let s = Server::start(&["--threads", "1"], &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/clients.py");
    let out = std::process::Command::new("python3")
        .args([script, &s.url, MODEL])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("checks passed"));
}
