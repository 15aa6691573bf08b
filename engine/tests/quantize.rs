//! `genie model quantize` on the default model: the files it writes hold the planned mix
//! of types, the Python `gguf` package (llama.cpp's reader, independent of candle's)
//! dequantises every tensor to the same float32 values candle does, and both the Q8_0 and
//! the Q4_K_M file run in the engine.

use candle_core::quantized::gguf_file::Content;
use candle_core::Device;
use genie_engine::quantize::{quantize, FileType};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;

/// name → (type, sha256 of the float32 values, count), as candle dequantises the file.
fn candle_digests(path: &Path) -> std::collections::BTreeMap<String, (String, String, usize)> {
    let mut f = std::fs::File::open(path).unwrap();
    let content = Content::read(&mut f).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for (name, info) in &content.tensor_infos {
        let q = content.tensor(&mut f, name, &Device::Cpu).unwrap();
        let v = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let digest = format!("{:x}", Sha256::digest(&bytes));
        out.insert(
            name.clone(),
            (format!("{:?}", info.ggml_dtype), digest, v.len()),
        );
    }
    out
}

/// The `gguf` package's digests, or None (with a message) when it is not installed and
/// this is not CI.
fn gguf_digests(path: &Path) -> Option<serde_json::Value> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../scripts/gguf_dequant_digest.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .arg(path)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'gguf'") && std::env::var_os("CI").is_none() {
            eprintln!(
                "SKIPPED the gguf package check: `pip install gguf==0.19.0` (CI installs it)"
            );
            return None;
        }
        panic!("{script}: {err}");
    }
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn check_against_gguf(path: &Path) {
    let ours = candle_digests(path);
    let Some(theirs) = gguf_digests(path) else {
        return;
    };
    assert_eq!(theirs.as_object().unwrap().len(), ours.len());
    for (name, (_, digest, n)) in &ours {
        let t = &theirs[name];
        assert_eq!(
            t[1].as_str().unwrap(),
            digest,
            "{name} ({}) dequantises differently",
            t[0]
        );
        assert_eq!(t[2].as_u64().unwrap() as usize, *n, "{name}");
    }
}

/// The file loads in the engine and its answer to a short prompt is " Paris", or close.
fn runs_and_knows_paris(path: &Path) {
    let engine = genie_engine::generate::Engine::load(
        path,
        &genie_engine::generate::EngineOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let prompt = engine.tokenize("The capital of France is", false).unwrap();
    let mut cache = engine.model.new_cache(prompt.len() + 1);
    let logits = engine.model.prefill(&prompt, &mut cache).unwrap();
    let paris = engine.tokenize(" Paris", false).unwrap()[0];
    let best = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert!(
        best - logits[paris as usize] < 1.0,
        "{}: {best} vs {}",
        path.display(),
        logits[paris as usize]
    );
}

#[test]
fn quantized_files_hold_the_planned_types_and_read_the_same_in_an_independent_reader() {
    let src = genie_engine::fetch::resolve_model(None).expect("the default model");
    let dir = std::env::temp_dir().join(format!("genie-quantize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let q8 = dir.join("smollm2.q8_0.gguf");
    let mix = quantize(&src, &q8, FileType::parse("q8_0").unwrap()).unwrap();
    assert_eq!(mix.keys().collect::<Vec<_>>(), ["F32", "Q8_0"], "{mix:?}");
    check_against_gguf(&q8);
    let meta = genie_engine::gguf::read_meta(&q8).unwrap();
    assert_eq!(meta.quant_mix, mix);
    runs_and_knows_paris(&q8);

    let km = dir.join("smollm2.q4_k_m.gguf");
    let mix = quantize(&src, &km, FileType::parse("q4_k_m").unwrap()).unwrap();
    for t in ["Q4K", "Q6K", "Q5_0", "Q8_0", "F32"] {
        assert!(mix.contains_key(t), "{t} in {mix:?}");
    }
    check_against_gguf(&km);
    runs_and_knows_paris(&km);
    std::fs::remove_dir_all(&dir).unwrap();
}
