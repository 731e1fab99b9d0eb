//! Contract 0.2.0, reads only `action`. Adds `shout` (the action in upper
//! case) as a splice; on a batch holding `action = "bad"` it returns the
//! splice fault named by config `fault` instead:
//! - `mask`: a row mask one byte too long;
//! - `index`: selects a row past the end of the batch;
//! - `length`: a new column with one value too many;
//! - `drop`: drops a column the batch does not have.
use weir_sdk::{Column, DataType, Error, Field, Output, RecordBatch, Splice, Transform};

struct BadSplice;

impl Transform for BadSplice {
    fn reads() -> Result<Option<Vec<String>>, Error> {
        Ok(Some(vec!["action".to_string()]))
    }

    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let actions = batch.utf8("action")?;
        let mut shout: Vec<Option<String>> = (0..actions.len())
            .map(|row| actions.get(row).map(str::to_uppercase))
            .collect();
        let field = Field {
            name: "shout".into(),
            data_type: DataType::Utf8,
            nullable: true,
        };
        let rows = batch.len();
        if weir_test_components::triggered(&batch, "bad").is_none() {
            let column = Column::from_utf8(shout.iter().map(Option::as_deref));
            return Ok(Splice::new().set(field, column).into());
        }
        let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
        let splice = match config["fault"].as_str().unwrap_or("") {
            "mask" => Splice::new().keep(&vec![true; rows + 8]),
            "index" => Splice::new().take(vec![0, rows as u32]),
            "length" => {
                shout.push(Some("EXTRA".into()));
                Splice::new().set(field, Column::from_utf8(shout.iter().map(Option::as_deref)))
            }
            "drop" => Splice::new().drop("no_such_column"),
            other => return Err(Error::InvalidConfig(format!("fault: unknown {other:?}"))),
        };
        Ok(splice.into())
    }
}

weir_sdk::export_transform!(BadSplice);
