//! Contract 0.2.0 with the host's compute kernels; reads no column.
//!
//! - config `mode = "echo"`: every column listed in `columns` is read
//!   through a kernel handle (`input` → `read`), handed back (`from-column`,
//!   `cast` to its own type) and emitted under its name, and a boolean
//!   `{name}_null` (`is-null`) is added: the output must equal the input
//!   plus those masks.
//! - `filter`: keeps the rows whose int64 `value` is > 0 (a kernel mask,
//!   `selected` → the splice's selection); the benchmark's numeric filter.
//! - `lower`: replaces utf8 `tailnum` by its lowercase, with the kernel;
//!   `lower_guest`: the same in the guest (reads the column, loops in
//!   Rust, returns the new column). The string-heavy benchmark's pair.
//! - otherwise (`derive`): adds `upper`, `len`, `big` (`id > 2`), `id_x10`
//!   and `sha` (hex SHA-256 of "s" + action) with kernels, and keeps the
//!   rows whose `action` is not `skip` (`selected` → a selection). On a batch with
//!   `action = "bad"` it does the fault named by config `fault` instead:
//!   `batch` (emits, then returns a whole batch), `twice` (emits `upper`
//!   and returns it in the splice too), `overflow` (`id + i64::MAX`),
//!   `burn` (kernels until the fuel runs out), `hoard` (kernel arrays until
//!   the memory limit), `stale` (uses a handle from an earlier call).
use std::sync::atomic::{AtomicU32, Ordering};

use weir_sdk::compute::{self, ArithOp, Col, HashOp, TextOp};
use weir_sdk::{Column, DataType, Error, Field, Output, RecordBatch, Splice, Transform};

struct Kernels;

/// A handle kept from the last call (`stale`): u32::MAX until one call ran.
static LAST: AtomicU32 = AtomicU32::new(u32::MAX);

fn echo(batch: &RecordBatch, columns: &[String]) -> Result<Output, Error> {
    for name in columns {
        let column = Col::input(name)?;
        let info = column.info()?;
        let back = Col::from_column(&column.read()?)?.cast(&info.data_type)?;
        compute::emit(name, &back)?;
        compute::emit(&format!("{name}_null"), &column.is_null()?)?;
    }
    let _ = batch;
    Ok(Splice::new().into())
}

fn derive() -> Result<Col, Error> {
    let action = Col::input("action")?;
    let id = Col::input("id")?;
    compute::emit("upper", &action.text(TextOp::Uppercase)?)?;
    compute::emit("len", &action.text(TextOp::Length)?)?;
    compute::emit("big", &id.gt(2)?)?;
    compute::emit("id_x10", &id.arith(ArithOp::Mul, 10)?)?;
    compute::emit("sha", &action.hash(HashOp::Sha256Hex, b"s")?)?;
    Ok(id)
}

/// `tailnum` lowercased by a loop in the guest.
fn lower_in_guest(batch: &RecordBatch) -> Result<Output, Error> {
    let texts = batch.utf8("tailnum")?;
    let mut out = weir_sdk::Utf8Builder::with_capacity(texts.len(), texts.len() * 8);
    for row in 0..texts.len() {
        match texts.get(row) {
            Some(text) => out.push_str(&text.to_lowercase()),
            None => out.push_null(),
        }
    }
    Ok(Splice::new()
        .replace(batch, "tailnum", out.finish())?
        .into())
}

impl Transform for Kernels {
    fn reads() -> Result<Option<Vec<String>>, Error> {
        let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
        Ok(Some(match config["mode"].as_str() {
            Some("lower_guest") => vec!["tailnum".to_string()],
            _ => Vec::new(),
        }))
    }

    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        let config: weir_sdk::serde_json::Value = weir_sdk::config()?;
        match config["mode"].as_str() {
            Some("filter") => {
                let keep = Col::input("value")?.gt(0)?.selected()?;
                return Ok(Splice::new().take(keep).into());
            }
            Some("lower") => {
                compute::emit("tailnum", &Col::input("tailnum")?.text(TextOp::Lowercase)?)?;
                return Ok(Splice::new().into());
            }
            Some("lower_guest") => return lower_in_guest(&batch),
            _ => {}
        }
        if config["mode"] == "echo" {
            let columns: Vec<String> = weir_sdk::serde_json::from_value(config["columns"].clone())
                .map_err(|e| Error::InvalidConfig(format!("columns: {e}")))?;
            return echo(&batch, &columns);
        }
        let bad = Col::input("action")?.eq("bad")?.selected()?;
        if bad.is_empty() {
            let id = derive()?;
            LAST.store(id.handle(), Ordering::Relaxed);
            // A null action is kept: its comparison is null, filled as true.
            let keep = Col::input("action")?
                .ne("skip")?
                .fill_null(true)?
                .selected()?;
            return Ok(Splice::new().take(keep).into());
        }
        let id = Col::input("id")?;
        match config["fault"].as_str().unwrap_or("") {
            "batch" => {
                compute::emit("big", &id.gt(2)?)?;
                Ok(Output::Batch(batch))
            }
            "twice" => {
                compute::emit("upper", &id.gt(2)?)?;
                let field = Field {
                    name: "upper".into(),
                    data_type: DataType::Int64,
                    nullable: true,
                };
                let column = Column::from_int64(vec![Some(1); batch.len()]);
                Ok(Splice::new().set(field, column).into())
            }
            "overflow" => {
                compute::emit("sum", &id.arith(ArithOp::Add, i64::MAX)?)?;
                Ok(Splice::new().into())
            }
            "burn" => loop {
                id.gt(0)?;
            },
            "hoard" => loop {
                Col::input("action")?.hash(HashOp::Sha256Hex, &[0; 1024])?;
            },
            "stale" => {
                let stale = weir_sdk::compute::Col::from_handle(LAST.load(Ordering::Relaxed));
                compute::emit("stale", &stale)?;
                Ok(Splice::new().into())
            }
            other => Err(Error::InvalidConfig(format!("fault: unknown {other:?}"))),
        }
    }
}

weir_sdk::export_transform!(Kernels);
