//! Inputs shared by the benches: manifest text and a representative result row.

use chrono::DateTime;
use dashbatch::output::{RowResult, Status, Tokens, UploadOutcome};

/// A manifest of `rows` rows over `files` distinct image files named `img/N.png`, with an
/// `id` column (as large jobs have) and one pass-through column.
pub fn manifest_text(rows: usize, files: usize) -> String {
    let mut text = String::with_capacity(rows * 64);
    text.push_str("id,model,file,prompt,batch\n");
    for i in 0..rows {
        let f = i % files.max(1);
        text.push_str(&format!(
            "row-{i},qwen-vl-plus,img/{f}.png,\"Describe image {i}, briefly.\",b{}\n",
            i % 7
        ));
    }
    text
}

/// A finished row shaped like the emulator's answers: a multi-line response that needs
/// quoting, token counts, an `oss://` URL.
pub fn sample_result(i: u64) -> RowResult {
    RowResult {
        id: format!("row-{i}"),
        line: i + 2,
        model: "qwen-vl-plus".into(),
        file: format!("img/{}.png", i % 16),
        prompt: format!("Describe image {i}, briefly."),
        status: Status::Ok,
        response: format!(
            "Emulated answer from qwen-vl-plus.\nPrompt: Describe image {i}, briefly.\n\
             image oss://dashscope-instant/abc/2025-01-01/0123456789abcdef/{i}.png \
             sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 size=2048"
        ),
        reasoning: String::new(),
        finish_reason: "stop".into(),
        tokens: Some(Tokens {
            prompt: 1234,
            completion: 56,
            total: 1290,
        }),
        oss_url: format!("oss://dashscope-instant/abc/2025-01-01/0123456789abcdef/{i}.png"),
        upload: UploadOutcome::Reused,
        attempts: 1,
        error_code: None,
        error_message: String::new(),
        request_id: "5b0c8d0e-6b1a-4c1f-9a57-3c1d2e4f5a6b".into(),
        latency_ms: 123,
        finished_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        input_digest: Some(dashbatch::output::results::resume::InputDigest(i)),
        extra: vec!["b1".into()],
        retries: Vec::new(),
        saw_429: 0,
    }
}
