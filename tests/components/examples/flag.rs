//! A validator: flags every row whose `action` is `bad`, and every row
//! whose `action` is null (as two different rules); panics on a `trap` row.
use weir_sdk::{Error, RecordBatch, Validate, Verdict};

struct Flag;

impl Validate for Flag {
    fn validate(batch: RecordBatch) -> Result<Vec<Verdict>, Error> {
        let actions = batch.utf8("action")?;
        let mut verdicts = Vec::new();
        for row in 0..actions.len() {
            match actions.get(row) {
                Some("trap") => panic!("validator poison row {row}"),
                Some("bad") => verdicts.push(Verdict {
                    row: row as u32,
                    rule: "not_bad".into(),
                    message: format!("row {row} is bad"),
                }),
                None => verdicts.push(Verdict {
                    row: row as u32,
                    rule: "action_present".into(),
                    message: "action is null".into(),
                }),
                Some(_) => {}
            }
        }
        Ok(verdicts)
    }
}

weir_sdk::export_validate!(Flag);
