//! The official `openai` Python SDK against `genie serve` (gateway/tests/e2e/openai_sdk.py).
//! `.ci/run` installs the SDK; elsewhere the test says it is skipped when the SDK is
//! missing, and fails instead when `CI` is set.

mod support;

use support::MODEL;

#[test]
fn the_openai_python_sdk_works_against_genie_serve() {
    let key = "sk-genie-e2e";
    support::python_checks(
        "openai_sdk.py",
        "openai",
        "python3 -m pip install openai",
        &["--threads", "1", "--api-key", key],
        &[
            ("GENIE_LIMITS__MAX_WAITING", "16"),
            ("GENIE_LIMITS__MAX_N", "32"),
        ],
        &[key, MODEL],
    );
}
