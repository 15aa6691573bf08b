//! `genie gateway` reads the model's GGUF metadata only: the bytes it reads stay a small
//! fraction of the file and its peak memory stays below the size of the weights it never
//! loads (`genie serve` and the workers hold those).

mod support;

use support::Server;

/// One field of `/proc/PID/FILE` (`name: value ...`), as a number.
fn proc_field(pid: u32, file: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/{file}"))
}

#[test]
fn the_gateway_reads_metadata_only_and_its_memory_stays_below_the_weights() {
    let path = genie_engine::fetch::resolve_model(None).expect("the default model");
    let file_bytes = std::fs::metadata(&path).unwrap().len();
    let weights_bytes = genie_engine::gguf::read_meta(&path).unwrap().weights_bytes as u64;
    let gw = Server::gateway(&[], &[]);
    // The start-up line is printed once the tokenizer and plan are built.
    let read = proc_field(gw.pid(), "io", "rchar");
    let peak = proc_field(gw.pid(), "status", "VmHWM") * 1024;
    eprintln!(
        "genie gateway: read {read} bytes of a {file_bytes}-byte GGUF; peak RSS {peak} bytes against {weights_bytes} bytes of weights"
    );
    assert!(
        read < file_bytes / 10,
        "the gateway read {read} bytes: tensor data ({file_bytes}-byte file)"
    );
    assert!(
        peak < weights_bytes,
        "peak RSS {peak} is not below the weights' {weights_bytes} bytes"
    );
}
