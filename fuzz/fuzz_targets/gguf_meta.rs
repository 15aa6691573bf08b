//! The GGUF metadata reader on arbitrary bytes: an error for anything malformed, never a
//! panic, a hang or an allocation sized by a length field the input does not back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let mut cursor = std::io::Cursor::new(data);
    if let Ok(meta) = genie_engine::gguf::read_meta_from(Path::new("fuzz.gguf"), &mut cursor) {
        // What the gateway does next with a header it accepted: tokenizer and template.
        let _ = genie_engine::model_text::ModelText::from_meta(meta);
    }
});
