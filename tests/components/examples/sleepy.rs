//! On `action = "sleep"`: sleeps 5 s inside a host call (WASI
//! `monotonic-clock` subscribe + `poll`), where no WebAssembly runs for the
//! epoch deadline to interrupt. On `action = "nap"`: sleeps 20 ms.
use weir_sdk::{Error, Output, RecordBatch, Transform};

struct Sleepy;

impl Transform for Sleepy {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        if weir_test_components::triggered(&batch, "sleep").is_some() {
            std::thread::sleep(std::time::Duration::from_secs(5));
        }
        if weir_test_components::triggered(&batch, "nap").is_some() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Sleepy);
