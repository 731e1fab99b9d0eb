//! A 0.2.0 validator that reads no column and fails rows with the host's
//! compute kernels: rule `odd` on every row whose `id` is odd (`reject`),
//! plus an ordinary verdict, rule `zero`, on the row whose `id` is 0.
use weir_sdk::compute::{self, ArithOp, Col};
use weir_sdk::{Error, RecordBatch, Validate, Verdict};

struct KernelCheck;

impl Validate for KernelCheck {
    fn reads() -> Result<Option<Vec<String>>, Error> {
        Ok(Some(Vec::new()))
    }

    fn validate(_batch: RecordBatch) -> Result<Vec<Verdict>, Error> {
        let id = Col::input("id")?;
        compute::reject(&id.arith(ArithOp::Rem, 2)?.eq(1)?, "odd", "id is odd")?;
        Ok(id
            .eq(0)?
            .selected()?
            .into_iter()
            .map(|row| Verdict {
                row,
                rule: "zero".into(),
                message: "id is zero".into(),
            })
            .collect())
    }
}

weir_sdk::export_validate!(KernelCheck);
