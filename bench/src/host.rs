//! The host line every benchmark prints beside its figures: CPU model, cores and the
//! vector ISA the kernels can use, since figures only compare within one ISA.

/// `CPU model, N logical cores, ISA: avx2 fma f16c …` (from /proc/cpuinfo and runtime
/// feature detection).
pub fn describe() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("host: {model}, {cores} logical cores, ISA: {}", isa())
}

#[cfg(target_arch = "x86_64")]
fn isa() -> String {
    let mut f = Vec::new();
    macro_rules! has {
        ($($name:tt),*) => {
            $(if std::arch::is_x86_feature_detected!($name) { f.push($name); })*
        };
    }
    has!(
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vnni",
        "avxvnni"
    );
    if f.is_empty() {
        "baseline x86-64 (no AVX2)".into()
    } else {
        f.join(" ")
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn isa() -> String {
    std::env::consts::ARCH.to_string()
}
