//! Structured outputs and tool calls through the clients applications use
//! (tests/e2e/clients.py): the official `openai` SDK's parse() and tool calls, instructor
//! (TOOLS and JSON_SCHEMA modes) and LangChain's `with_structured_output` (json_schema and
//! function_calling), against `genie serve`. `.ci/run` installs them, pinned; elsewhere
//! the test says it is skipped when one is missing, and fails instead when `CI` is set.

mod support;

use support::MODEL;

#[test]
fn instructor_langchain_and_the_openai_sdk_get_valid_structured_answers() {
    support::python_checks(
        "clients.py",
        "openai, instructor, langchain_openai",
        "python3 -m pip install openai==3.3.0 instructor==1.17.0 langchain-openai==1.8.1",
        &["--threads", "1"],
        &[],
        &[MODEL],
    );
}
