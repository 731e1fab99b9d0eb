//! Date and timestamp columns written in formats arrow does not read.
//!
//! arrow reads `date32` as `YYYY-MM-DD` and timestamps in RFC 3339 / ISO
//! 8601 forms. A column written another way (`2012/01/01`, `01/31/2012`,
//! `31.01.2012 13:45`) is read as text and converted here with chrono,
//! using the column's `format` (strftime syntax, as in the pipeline file's
//! `schema`) or a format inferred from the sample, as DuckDB's CSV sniffer
//! does: among [`CANDIDATE_DATE_FORMATS`] and
//! [`CANDIDATE_TIMESTAMP_FORMATS`], the first under which every non-null
//! sampled value parses.
//!
//! A value that does not match its format makes the batch fail
//! conversion; the readers then convert record by record and quarantine
//! only the records that do not match, naming the column, the value and
//! the format.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Date32Array, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{NaiveDate, NaiveDateTime};

/// Date formats tried, in order, on a text column of an inferred schema.
/// Month-first before day-first, as DuckDB: a column where both parse
/// (`01/02/2012`) is read month-first.
pub const CANDIDATE_DATE_FORMATS: &[&str] = &[
    "%Y/%m/%d", "%m/%d/%Y", "%d/%m/%Y", "%d.%m.%Y", "%m-%d-%Y", "%d-%m-%Y", "%Y.%m.%d",
];

/// Timestamp formats tried, in order, on a text column of an inferred
/// schema (after the date formats).
pub const CANDIDATE_TIMESTAMP_FORMATS: &[&str] = &[
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M",
];

/// One column read as text and converted with a format.
#[derive(Debug, Clone)]
struct Formatted {
    name: String,
    /// `Date32` or `Timestamp(µs, None)`.
    target: DataType,
    format: String,
}

/// The formatted columns of a source schema.
#[derive(Debug, Clone, Default)]
pub struct DateFormats {
    columns: Vec<Formatted>,
}

impl DateFormats {
    /// No formatted column: batches pass unchanged.
    pub fn none() -> DateFormats {
        DateFormats::default()
    }

    /// Whether no column has a format.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    /// Adds column `name` of type `target` (`Date32` or a timestamp),
    /// written as `format`.
    pub fn add(&mut self, name: &str, target: DataType, format: &str) {
        self.columns.push(Formatted {
            name: name.to_string(),
            target,
            format: format.to_string(),
        });
    }

    /// `schema` as the decoder must read it: formatted columns as `utf8`.
    pub fn read_schema(&self, schema: &SchemaRef) -> SchemaRef {
        if self.is_empty() {
            return schema.clone();
        }
        Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| match self.columns.iter().any(|c| &c.name == f.name()) {
                    true => Field::new(f.name(), DataType::Utf8, f.is_nullable()),
                    false => f.as_ref().clone(),
                })
                .collect::<Vec<_>>(),
        ))
    }

    /// `batch` (read with [`DateFormats::read_schema`]) converted to
    /// `schema`.
    ///
    /// # Errors
    /// The first value that does not match its column's format, named
    /// with the column and the format.
    pub fn convert(&self, batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, String> {
        if self.is_empty() {
            return Ok(batch);
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for formatted in &self.columns {
            let Ok(index) = batch.schema().index_of(&formatted.name) else {
                continue;
            };
            let Some(text) = columns[index].as_any().downcast_ref::<StringArray>() else {
                continue;
            };
            columns[index] = convert_column(text, formatted)?;
        }
        RecordBatch::try_new(schema.clone(), columns).map_err(|e| e.to_string())
    }
}

fn convert_column(text: &StringArray, formatted: &Formatted) -> Result<ArrayRef, String> {
    let bad = |value: &str| {
        format!(
            "column `{}`: `{}` does not match its format `{}`",
            formatted.name,
            crate::plugin::head(value, 64),
            formatted.format
        )
    };
    match formatted.target {
        DataType::Date32 => {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
            let days = text
                .iter()
                .map(|value| match value {
                    None => Ok(None),
                    Some(value) => NaiveDate::parse_from_str(value.trim(), &formatted.format)
                        .map(|date| Some((date - epoch).num_days() as i32))
                        .map_err(|_| bad(value)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(Date32Array::from(days)))
        }
        _ => {
            let micros = text
                .iter()
                .map(|value| match value {
                    None => Ok(None),
                    Some(value) => parse_timestamp(value.trim(), &formatted.format)
                        .map(|at| Some(at.and_utc().timestamp_micros()))
                        .ok_or_else(|| bad(value)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Arc::new(TimestampMicrosecondArray::from(micros)))
        }
    }
}

/// A timestamp in `format`; a format without a time of day reads
/// midnight.
fn parse_timestamp(value: &str, format: &str) -> Option<NaiveDateTime> {
    NaiveDateTime::parse_from_str(value, format)
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(value, format)
                .ok()
                .and_then(|date| date.and_hms_opt(0, 0, 0))
        })
}

/// The date or timestamp format (and type) under which every non-null
/// value of `sample` parses, among the candidates; `None` when none does
/// or the sample has no value.
pub fn infer_format(sample: &StringArray) -> Option<(DataType, &'static str)> {
    let values: Vec<&str> = sample.iter().flatten().map(str::trim).collect();
    if values.is_empty() {
        return None;
    }
    let all = |parses: &dyn Fn(&str) -> bool| values.iter().all(|v| parses(v));
    for format in CANDIDATE_DATE_FORMATS {
        if all(&|v| NaiveDate::parse_from_str(v, format).is_ok()) {
            return Some((DataType::Date32, format));
        }
    }
    for format in CANDIDATE_TIMESTAMP_FORMATS {
        if all(&|v| NaiveDateTime::parse_from_str(v, format).is_ok()) {
            return Some((DataType::Timestamp(TimeUnit::Microsecond, None), format));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slashed_dates_are_inferred_and_converted() {
        let sample = StringArray::from(vec![Some("2012/01/31"), None, Some("2013/12/01")]);
        let (target, format) = infer_format(&sample).unwrap();
        assert_eq!((target.clone(), format), (DataType::Date32, "%Y/%m/%d"));
        let mut formats = DateFormats::none();
        formats.add("d", target.clone(), format);
        let schema = Arc::new(Schema::new(vec![Field::new("d", target, true)]));
        let read = RecordBatch::try_new(
            formats.read_schema(&schema),
            vec![Arc::new(sample) as ArrayRef],
        )
        .unwrap();
        let converted = formats.convert(read, &schema).unwrap();
        let days = converted
            .column(0)
            .as_any()
            .downcast_ref::<Date32Array>()
            .unwrap();
        assert_eq!(days.value(0), 15370);
        assert!(days.is_null(1));
    }

    #[test]
    fn month_first_wins_when_both_parse_and_day_first_is_found_when_only_it_does() {
        let ambiguous = StringArray::from(vec!["01/02/2012"]);
        assert_eq!(infer_format(&ambiguous).unwrap().1, "%m/%d/%Y");
        let day_first = StringArray::from(vec!["01/02/2012", "31/12/2012"]);
        assert_eq!(infer_format(&day_first).unwrap().1, "%d/%m/%Y");
        let timestamps = StringArray::from(vec!["2012/01/02 13:45:00"]);
        assert_eq!(infer_format(&timestamps).unwrap().1, "%Y/%m/%d %H:%M:%S");
        assert!(infer_format(&StringArray::from(vec!["free text"])).is_none());
    }

    #[test]
    fn a_value_off_format_is_named() {
        let mut formats = DateFormats::none();
        formats.add("d", DataType::Date32, "%Y/%m/%d");
        let schema = Arc::new(Schema::new(vec![Field::new("d", DataType::Date32, true)]));
        let read = RecordBatch::try_new(
            formats.read_schema(&schema),
            vec![Arc::new(StringArray::from(vec!["2012-01-01"])) as ArrayRef],
        )
        .unwrap();
        let error = formats.convert(read, &schema).unwrap_err();
        assert!(
            error.contains("`2012-01-01`") && error.contains("%Y/%m/%d"),
            "{error}"
        );
        assert!(
            crate::config::is_valid_date_format("%d.%m.%Y")
                && !crate::config::is_valid_date_format("%Q")
        );
    }
}
