//! On `action = "chatter"`: writes 8 MiB to stderr, then panics.
use std::io::Write;
use weir_sdk::{Error, Output, RecordBatch, Transform};

struct Chatty;

impl Transform for Chatty {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        if let Some(row) = weir_test_components::triggered(&batch, "chatter") {
            let line = [b'z'; 1024];
            let mut stderr = std::io::stderr();
            for _ in 0..8 * 1024 {
                let _ = stderr.write_all(&line);
            }
            panic!("poison row {row} after the chatter");
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Chatty);
