//! On `action = "bomb"`: allocates 16 MiB blocks until memory runs out.
use weir_sdk::{Error, Output, RecordBatch, Transform};

struct Bomb;

impl Transform for Bomb {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        if weir_test_components::triggered(&batch, "bomb").is_some() {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(std::hint::black_box(vec![1u8; 16 << 20]));
            }
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Bomb);
