//! Burns a fixed amount of work (`{"iterations": N}` in the stage config,
//! default 20,000,000 loop turns), then ends the way the batch's `action`
//! column asks: `error` returns an error, `trap` panics, `grow` allocates
//! past any memory cap, `spin` loops until stopped; anything else succeeds.
use weir_sdk::{Error, Output, RecordBatch, Transform};

#[derive(serde::Deserialize)]
struct Config {
    iterations: Option<u64>,
}

struct Burn;

fn burn(iterations: u64) -> u64 {
    let mut n: u64 = 0;
    for i in 0..iterations {
        n = std::hint::black_box(n.wrapping_mul(31).wrapping_add(i));
    }
    n
}

impl Transform for Burn {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let config: Config = weir_sdk::host::config().unwrap_or(Config { iterations: None });
        std::hint::black_box(burn(config.iterations.unwrap_or(20_000_000)));
        let trigger = |word| weir_test_components::triggered(&batch, word).is_some();
        if trigger("error") {
            return Err(Error::InvalidInput("asked for an error".into()));
        }
        if trigger("trap") {
            panic!("asked for a trap");
        }
        if trigger("grow") {
            let hoard = std::hint::black_box(vec![1u8; 1 << 30]);
            return Err(Error::Internal(format!("got {} bytes", hoard.len())));
        }
        if trigger("spin") {
            loop {
                std::hint::black_box(burn(1_000));
            }
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Burn);
