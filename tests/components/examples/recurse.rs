//! On `action = "recurse"`: recurses without end (a stack overflow trap).
use weir_sdk::{Error, Output, RecordBatch, Transform};

#[inline(never)]
#[allow(unconditional_recursion)]
fn depth(n: u64, pad: &mut [u8; 256]) -> u64 {
    pad[(n % 256) as usize] = n as u8;
    let mut next = *pad;
    depth(n + 1, &mut next) + u64::from(next[0])
}

struct Recurse;

impl Transform for Recurse {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        if weir_test_components::triggered(&batch, "recurse").is_some() {
            let mut pad = [0u8; 256];
            return Err(Error::Internal(format!("{}", depth(0, &mut pad))));
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Recurse);
