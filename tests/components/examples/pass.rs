//! Reads every column and changes nothing (contract 0.2.0: an empty
//! splice). The boundary benchmark's measure of what it costs to send
//! columns into a plugin: nothing crosses back.
use weir_sdk::{Error, Output, RecordBatch, Splice, Transform};

struct Pass;

impl Transform for Pass {
    fn reads() -> Result<Option<Vec<String>>, Error> {
        Ok(None)
    }

    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        // Touch the batch so the call cannot be optimised into nothing.
        std::hint::black_box(batch.len());
        Ok(Splice::new().into())
    }
}

weir_sdk::export_transform!(Pass);
