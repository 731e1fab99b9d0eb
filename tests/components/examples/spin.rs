//! On `action = "loop"`: spins forever (stopped by fuel or by the deadline).
use weir_sdk::{Error, Output, RecordBatch, Transform};

struct Spin;

impl Transform for Spin {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        if weir_test_components::triggered(&batch, "loop").is_some() {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Spin);
