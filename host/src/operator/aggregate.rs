//! `aggregate`: groups rows by key columns (and, with a window, by
//! tumbling or hopping windows of event time) and emits one row per group
//! and window when the window closes: the group's columns, `window_start`
//! and `window_end` (with a window), and one column per measure.
//!
//! **Watermark.** The watermark is the latest event time seen minus
//! `allowed_lateness`. A window `[start, end)` closes, and its rows are
//! emitted, once the watermark reaches `end` (after the batch that moved
//! it). A row whose every window is closed is quarantined with the error
//! kind `late`; a row with a null event time as `missing_event_time`.
//! Without a window there is one window, which closes when the input ends
//! (`weir run`). This is the event-time model of the Dataflow paper (Akidau
//! et al., VLDB 2015) with a fixed-lag (bounded out-of-orderness)
//! watermark, as Flink's `forBoundedOutOfOrderness`.
//!
//! State: key = window start (8 bytes, big-endian with the sign bit
//! flipped, so keys sort by start) + the group columns in Arrow's row
//! format → the accumulators of every measure. Reserved keys shorter than
//! 8 bytes hold the watermark and the group columns' schema (so a resumed
//! run can emit windows before it reads another row).
//!
//! Measures follow SQL: nulls are ignored; `count(*)` counts rows; `sum`,
//! `min`, `max` of integers are integers (`int64`) and of floats `float64`;
//! `sum`/`min`/`max`/`mean` of no values are null; `count_distinct` is
//! exact (the distinct values are kept in state); `approx_count_distinct`
//! keeps a HyperLogLog++ sketch instead (see
//! [`super::config::Function::ApproxCountDistinct`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::row::{RowConverter, Rows, SortField};

use super::config::{Function, Measure, OperatorConfig};
use super::time::{Windows, event_times, millis};
use super::{Operator, Rejected, Step, reason};
use crate::columnar::column_names;
use crate::state::Changes;
use crate::state::keyed::{Codec, Keyed};

const WATERMARK: &[u8] = b"";
const SCHEMA: &[u8] = b"s";
/// The start of the single window of an aggregate without one.
const WHOLE_INPUT: i64 = i64::MIN;

/// One measure's running value.
#[derive(Debug, Clone, PartialEq)]
enum Acc {
    Count(i64),
    SumI(Option<i64>),
    SumF(Option<f64>),
    MinI(Option<i64>),
    MaxI(Option<i64>),
    MinF(Option<f64>),
    MaxF(Option<f64>),
    Mean {
        sum: f64,
        n: i64,
    },
    Distinct {
        values: HashSet<Vec<u8>>,
        bytes: usize,
    },
    /// A sketch of the distinct values (their bytes in Arrow's row format).
    Approx(Box<Sketch>),
}

/// `approx_count_distinct`'s sketch: HyperLogLog++ at precision 12 with
/// 6-bit registers, hashing with WyHash's fixed default seed (so a stored
/// sketch goes on counting the same values the same way after a restart).
type Sketch = cardinality_estimator::CardinalityEstimator<[u8]>;

/// A group's accumulators, one per measure.
#[derive(Debug, Clone, PartialEq)]
struct Accs(Vec<Acc>);

/// What a measure reads from a batch.
enum Input {
    Rows,
    Valid(ArrayRef),
    Int(Int64Array),
    Float(Float64Array),
    Distinct(Rows, ArrayRef),
}

fn put_opt_i(out: &mut Vec<u8>, v: Option<i64>) {
    out.push(v.is_some() as u8);
    out.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
}

fn put_opt_f(out: &mut Vec<u8>, v: Option<f64>) {
    out.push(v.is_some() as u8);
    out.extend_from_slice(&v.unwrap_or(0.0).to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let slice = self
            .bytes
            .get(self.at..self.at + n)
            .context("a stored aggregate is truncated")?;
        self.at += n;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn opt_i(&mut self) -> Result<Option<i64>> {
        let some = self.u8()? == 1;
        let v = self.i64()?;
        Ok(some.then_some(v))
    }
    fn opt_f(&mut self) -> Result<Option<f64>> {
        let some = self.u8()? == 1;
        let v = self.f64()?;
        Ok(some.then_some(v))
    }
}

impl Codec for Accs {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * self.0.len());
        for acc in &self.0 {
            match acc {
                Acc::Count(n) => {
                    out.push(1);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Acc::SumI(v) => {
                    out.push(2);
                    put_opt_i(&mut out, *v);
                }
                Acc::SumF(v) => {
                    out.push(3);
                    put_opt_f(&mut out, *v);
                }
                Acc::MinI(v) => {
                    out.push(4);
                    put_opt_i(&mut out, *v);
                }
                Acc::MaxI(v) => {
                    out.push(5);
                    put_opt_i(&mut out, *v);
                }
                Acc::MinF(v) => {
                    out.push(6);
                    put_opt_f(&mut out, *v);
                }
                Acc::MaxF(v) => {
                    out.push(7);
                    put_opt_f(&mut out, *v);
                }
                Acc::Mean { sum, n } => {
                    out.push(8);
                    out.extend_from_slice(&sum.to_le_bytes());
                    out.extend_from_slice(&n.to_le_bytes());
                }
                Acc::Distinct { values, .. } => {
                    out.push(9);
                    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
                    for value in values {
                        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                        out.extend_from_slice(value);
                    }
                }
                Acc::Approx(sketch) => {
                    out.push(10);
                    // The crate's own serde form, as JSON.
                    let json = serde_json::to_vec(sketch).expect("a sketch serializes");
                    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
                    out.extend_from_slice(&json);
                }
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader { bytes, at: 0 };
        let mut accs = Vec::new();
        while r.at < bytes.len() {
            accs.push(match r.u8()? {
                1 => Acc::Count(r.i64()?),
                2 => Acc::SumI(r.opt_i()?),
                3 => Acc::SumF(r.opt_f()?),
                4 => Acc::MinI(r.opt_i()?),
                5 => Acc::MaxI(r.opt_i()?),
                6 => Acc::MinF(r.opt_f()?),
                7 => Acc::MaxF(r.opt_f()?),
                8 => Acc::Mean {
                    sum: r.f64()?,
                    n: r.i64()?,
                },
                9 => {
                    let n = u32::from_le_bytes(r.take(4)?.try_into()?) as usize;
                    let mut values = HashSet::with_capacity(n);
                    let mut bytes = 0;
                    for _ in 0..n {
                        let len = u32::from_le_bytes(r.take(4)?.try_into()?) as usize;
                        bytes += len + 4;
                        values.insert(r.take(len)?.to_vec());
                    }
                    Acc::Distinct { values, bytes }
                }
                10 => {
                    let len = u32::from_le_bytes(r.take(4)?.try_into()?) as usize;
                    let sketch: Sketch = serde_json::from_slice(r.take(len)?)
                        .context("a stored approx_count_distinct sketch does not decode")?;
                    Acc::Approx(Box::new(sketch))
                }
                tag => bail!("a stored aggregate has an unknown tag {tag}"),
            });
        }
        Ok(Accs(accs))
    }

    fn size(&self) -> usize {
        self.0
            .iter()
            .map(|acc| match acc {
                Acc::Distinct { bytes, .. } => 5 + bytes,
                Acc::Approx(sketch) => 5 + sketch.size_of(),
                _ => 17,
            })
            .sum()
    }
}

/// Reserved entries hold other values than accumulators; the store sees
/// bytes, so they share the map through this wrapper.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    Group(Accs),
    Raw(Vec<u8>),
}

impl Codec for Entry {
    fn encode(&self) -> Vec<u8> {
        match self {
            Entry::Group(accs) => accs.encode(),
            Entry::Raw(bytes) => bytes.clone(),
        }
    }
    fn decode(bytes: &[u8]) -> Result<Self> {
        Accs::decode(bytes).map(Entry::Group)
    }
    fn size(&self) -> usize {
        match self {
            Entry::Group(accs) => accs.size(),
            Entry::Raw(bytes) => bytes.len(),
        }
    }
}

fn start_key(start: i64) -> [u8; 8] {
    ((start as u64) ^ (1 << 63)).to_be_bytes()
}

fn key_start(key: &[u8]) -> i64 {
    (u64::from_be_bytes(key[..8].try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

/// The schema of `fields` as bytes (an empty Parquet file, whose footer
/// carries the Arrow schema), and back.
fn schema_bytes(schema: &SchemaRef) -> Result<Vec<u8>> {
    let mut writer = parquet::arrow::ArrowWriter::try_new(Vec::new(), schema.clone(), None)?;
    writer.write(&RecordBatch::new_empty(schema.clone()))?;
    Ok(writer.into_inner()?)
}

fn schema_from(bytes: &[u8]) -> Result<SchemaRef> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        bytes::Bytes::copy_from_slice(bytes),
    )?;
    Ok(builder.schema().clone())
}

/// The schema of the rows an aggregate of `config` emits for input rows of
/// `input`: the group columns (nullable), `window_start` and `window_end`
/// (UTC millisecond timestamps) with a window, then one nullable column
/// per measure (`int64`, or `float64` for `mean` and for `sum`/`min`/`max`
/// of floats and decimals).
///
/// # Errors
/// A column the config names is missing, or a measure's column is not
/// numeric where it must be.
pub fn output_schema(config: &OperatorConfig, input: &Schema) -> Result<SchemaRef> {
    let column = |name: &str, what: &str| {
        input.field_with_name(name).map_err(|_| {
            anyhow::anyhow!(
                "operator `{}`: {what} column `{name}` is not in its input (columns: {})",
                config.name,
                column_names(input)
            )
        })
    };
    let mut fields = Vec::new();
    for name in &config.group_by {
        fields.push(Field::new(
            name,
            column(name, "group_by")?.data_type().clone(),
            true,
        ));
    }
    if config.window.is_some() {
        let data_type = DataType::Timestamp(
            arrow::datatypes::TimeUnit::Millisecond,
            Some("+00:00".into()),
        );
        fields.push(Field::new("window_start", data_type.clone(), false));
        fields.push(Field::new("window_end", data_type, false));
    }
    for measure in config.parsed_measures() {
        let data_type = match (measure.function, &measure.column) {
            (
                Function::Count | Function::CountDistinct | Function::ApproxCountDistinct,
                Some(name),
            ) => {
                column(name, "measure")?;
                DataType::Int64
            }
            (_, None) => DataType::Int64,
            (Function::Mean, Some(name)) => {
                column(name, "measure")?;
                DataType::Float64
            }
            (Function::Sum | Function::Min | Function::Max, Some(name)) => {
                match column(name, "measure")?.data_type() {
                    t if t.is_integer() => DataType::Int64,
                    t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => {
                        DataType::Float64
                    }
                    other => bail!(
                        "operator `{}`: measure `{}` needs a numeric column; `{name}` is {other}",
                        config.name,
                        measure.name
                    ),
                }
            }
        };
        fields.push(Field::new(&measure.name, data_type, true));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The `aggregate` operator.
pub struct Aggregate {
    name: String,
    group_by: Vec<String>,
    measures: Vec<Measure>,
    event_time: Option<String>,
    windows: Option<Windows>,
    lateness: i64,
    /// The group columns' fields, from the first batch or the state.
    group_schema: Option<SchemaRef>,
    converter: Option<RowConverter>,
    distinct_converters: Vec<Option<RowConverter>>,
    groups: Keyed<Entry>,
    /// Open windows' starts → their group keys.
    open: BTreeMap<i64, HashSet<Vec<u8>>>,
    watermark: Option<i64>,
}

impl Aggregate {
    /// An aggregate operator from its (checked) config.
    ///
    /// # Errors
    /// A duration that does not parse.
    pub fn new(config: &OperatorConfig) -> Result<Aggregate> {
        let windows = match &config.window {
            Some(window) => {
                let size = millis(window)?;
                let hop = config
                    .hop
                    .as_deref()
                    .map(millis)
                    .transpose()?
                    .unwrap_or(size);
                Some(Windows { size, hop })
            }
            None => None,
        };
        let lateness = match &config.allowed_lateness {
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| anyhow::anyhow!("allowed_lateness `{text}`: {e}"))?
                .as_millis() as i64,
            None => 0,
        };
        let measures = config.parsed_measures();
        Ok(Aggregate {
            name: config.name.clone(),
            group_by: config.group_by.clone(),
            distinct_converters: measures.iter().map(|_| None).collect(),
            measures,
            event_time: config.event_time.clone(),
            windows,
            lateness,
            group_schema: None,
            converter: None,
            groups: Keyed::default(),
            open: BTreeMap::new(),
            watermark: None,
        })
    }

    fn column<'a>(&self, batch: &'a RecordBatch, name: &str, what: &str) -> Result<&'a ArrayRef> {
        batch.column_by_name(name).with_context(|| {
            format!(
                "operator `{}`: {what} column `{name}` is not in the batch (columns: {})",
                self.name,
                column_names(&batch.schema())
            )
        })
    }

    /// The group columns of `batch` in row format (`None` without
    /// group_by: one group, whose key is empty).
    fn group_rows(&mut self, batch: &RecordBatch) -> Result<Option<Rows>> {
        let mut columns = Vec::with_capacity(self.group_by.len());
        let mut fields = Vec::with_capacity(self.group_by.len());
        for name in &self.group_by {
            let column = self.column(batch, name, "group_by")?.clone();
            fields.push(Field::new(name, column.data_type().clone(), true));
            columns.push(column);
        }
        if self.group_schema.is_none() {
            let schema = Arc::new(Schema::new(fields));
            self.groups.put(SCHEMA, Entry::Raw(schema_bytes(&schema)?));
            self.group_schema = Some(schema);
        }
        if self.group_by.is_empty() {
            return Ok(None);
        }
        if self.converter.is_none() {
            self.converter = Some(self.make_converter()?);
        }
        Ok(Some(
            self.converter
                .as_ref()
                .expect("set above")
                .convert_columns(&columns)?,
        ))
    }

    fn make_converter(&self) -> Result<RowConverter> {
        let schema = self.group_schema.as_ref().context("no group schema yet")?;
        Ok(RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )?)
    }

    fn inputs(&mut self, batch: &RecordBatch) -> Result<Vec<Input>> {
        let mut inputs = Vec::with_capacity(self.measures.len());
        for (i, measure) in self.measures.iter().enumerate() {
            let Some(name) = &measure.column else {
                inputs.push(Input::Rows);
                continue;
            };
            let column = self.column(batch, name, "measure")?;
            let input = match measure.function {
                Function::Count => Input::Valid(column.clone()),
                Function::CountDistinct | Function::ApproxCountDistinct => {
                    if self.distinct_converters[i].is_none() {
                        self.distinct_converters[i] =
                            Some(RowConverter::new(vec![SortField::new(
                                column.data_type().clone(),
                            )])?);
                    }
                    let converter = self.distinct_converters[i].as_ref().expect("set above");
                    Input::Distinct(
                        converter.convert_columns(std::slice::from_ref(column))?,
                        column.clone(),
                    )
                }
                Function::Mean => Input::Float(
                    arrow::compute::cast(column, &DataType::Float64)?
                        .as_primitive::<Float64Type>()
                        .clone(),
                ),
                Function::Sum | Function::Min | Function::Max => match column.data_type() {
                    t if t.is_integer() => Input::Int(
                        arrow::compute::cast(column, &DataType::Int64)?
                            .as_primitive::<Int64Type>()
                            .clone(),
                    ),
                    t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => Input::Float(
                        arrow::compute::cast(column, &DataType::Float64)?
                            .as_primitive::<Float64Type>()
                            .clone(),
                    ),
                    other => bail!(
                        "operator `{}`: measure `{}` needs a numeric column; `{name}` is {other}",
                        self.name,
                        measure.name
                    ),
                },
            };
            inputs.push(input);
        }
        Ok(inputs)
    }

    fn fresh(&self, inputs: &[Input]) -> Accs {
        Accs(
            self.measures
                .iter()
                .zip(inputs)
                .map(|(m, input)| {
                    let int = matches!(input, Input::Int(_));
                    match (m.function, int) {
                        (Function::Count, _) => Acc::Count(0),
                        (Function::Sum, true) => Acc::SumI(None),
                        (Function::Sum, false) => Acc::SumF(None),
                        (Function::Min, true) => Acc::MinI(None),
                        (Function::Min, false) => Acc::MinF(None),
                        (Function::Max, true) => Acc::MaxI(None),
                        (Function::Max, false) => Acc::MaxF(None),
                        (Function::Mean, _) => Acc::Mean { sum: 0.0, n: 0 },
                        (Function::CountDistinct, _) => Acc::Distinct {
                            values: HashSet::new(),
                            bytes: 0,
                        },
                        (Function::ApproxCountDistinct, _) => Acc::Approx(Box::new(Sketch::new())),
                    }
                })
                .collect(),
        )
    }

    /// Removes the windows that closed (all with `everything`) and returns
    /// their rows, ordered by window start then group.
    fn close(&mut self, everything: bool) -> Result<Option<RecordBatch>> {
        let closed: Vec<i64> = self
            .open
            .keys()
            .copied()
            .take_while(|&start| {
                everything
                    || match (self.windows, self.watermark) {
                        (Some(w), Some(watermark)) => start.saturating_add(w.size) <= watermark,
                        _ => false,
                    }
            })
            .collect();
        if closed.is_empty() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        for start in closed {
            let mut group: Vec<Vec<u8>> = self
                .open
                .remove(&start)
                .unwrap_or_default()
                .into_iter()
                .collect();
            group.sort_unstable();
            keys.extend(group);
        }
        let mut accs = Vec::with_capacity(keys.len());
        for key in &keys {
            match self.groups.remove(key) {
                Some(Entry::Group(group)) => accs.push(group),
                _ => bail!("operator `{}`: an open window has no state", self.name),
            }
        }
        self.output(&keys, &accs).map(Some)
    }

    fn output(&mut self, keys: &[Vec<u8>], accs: &[Accs]) -> Result<RecordBatch> {
        let schema = self
            .group_schema
            .clone()
            .context("the group columns' schema is unknown")?;
        let mut columns: Vec<ArrayRef> = if self.group_by.is_empty() {
            Vec::new()
        } else {
            if self.converter.is_none() {
                self.converter = Some(self.make_converter()?);
            }
            let converter = self.converter.as_ref().expect("set above");
            let parser = converter.parser();
            converter.convert_rows(keys.iter().map(|k| parser.parse(&k[8..])))?
        };
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        if let Some(Windows { size, .. }) = self.windows {
            let starts: Vec<i64> = keys.iter().map(|k| key_start(k)).collect();
            let ends: Vec<i64> = starts.iter().map(|s| s.saturating_add(size)).collect();
            for (name, values) in [("window_start", starts), ("window_end", ends)] {
                let array = TimestampMillisecondArray::from(values).with_timezone("+00:00");
                fields.push(Field::new(name, array.data_type().clone(), false));
                columns.push(Arc::new(array));
            }
        }
        for (i, measure) in self.measures.iter().enumerate() {
            let accs = accs.iter().map(|a| &a.0[i]);
            let (array, data_type): (ArrayRef, DataType) = match accs.clone().next() {
                Some(Acc::SumF(_) | Acc::MinF(_) | Acc::MaxF(_) | Acc::Mean { .. }) => (
                    Arc::new(Float64Array::from_iter(accs.map(|acc| match acc {
                        Acc::SumF(v) | Acc::MinF(v) | Acc::MaxF(v) => *v,
                        Acc::Mean { sum, n } => (*n > 0).then(|| sum / *n as f64),
                        _ => None,
                    }))),
                    DataType::Float64,
                ),
                _ => (
                    Arc::new(Int64Array::from_iter(accs.map(|acc| match acc {
                        Acc::Count(n) => Some(*n),
                        Acc::SumI(v) | Acc::MinI(v) | Acc::MaxI(v) => *v,
                        Acc::Distinct { values, .. } => Some(values.len() as i64),
                        Acc::Approx(sketch) => Some(sketch.estimate() as i64),
                        _ => None,
                    }))),
                    DataType::Int64,
                ),
            };
            fields.push(Field::new(&measure.name, data_type, true));
            columns.push(array);
        }
        Ok(RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns,
        )?)
    }
}

fn update(acc: &mut Acc, input: &Input, row: usize) {
    match (acc, input) {
        (Acc::Count(n), Input::Rows) => *n += 1,
        (Acc::Count(n), Input::Valid(array)) => *n += array.is_valid(row) as i64,
        (Acc::SumI(sum), Input::Int(a)) if a.is_valid(row) => {
            *sum = Some(sum.unwrap_or(0).wrapping_add(a.value(row)));
        }
        (Acc::SumF(sum), Input::Float(a)) if a.is_valid(row) => {
            *sum = Some(sum.unwrap_or(0.0) + a.value(row));
        }
        (Acc::MinI(min), Input::Int(a)) if a.is_valid(row) => {
            *min = Some(min.map_or(a.value(row), |m| m.min(a.value(row))));
        }
        (Acc::MaxI(max), Input::Int(a)) if a.is_valid(row) => {
            *max = Some(max.map_or(a.value(row), |m| m.max(a.value(row))));
        }
        (Acc::MinF(min), Input::Float(a)) if a.is_valid(row) => {
            *min = Some(min.map_or(a.value(row), |m| m.min(a.value(row))));
        }
        (Acc::MaxF(max), Input::Float(a)) if a.is_valid(row) => {
            *max = Some(max.map_or(a.value(row), |m| m.max(a.value(row))));
        }
        (Acc::Mean { sum, n }, Input::Float(a)) if a.is_valid(row) => {
            *sum += a.value(row);
            *n += 1;
        }
        (Acc::Approx(sketch), Input::Distinct(rows, array)) if array.is_valid(row) => {
            sketch.insert(rows.row(row).as_ref());
        }
        (Acc::Distinct { values, bytes }, Input::Distinct(rows, array)) => {
            let value = rows.row(row);
            if array.is_valid(row) && !values.contains(value.as_ref()) {
                *bytes += value.as_ref().len() + 4;
                values.insert(value.as_ref().to_vec());
            }
        }
        _ => {}
    }
}

impl Operator for Aggregate {
    fn restore(&mut self, changes: Changes) -> Result<()> {
        for (key, value) in changes {
            match key.as_slice() {
                WATERMARK => {
                    self.watermark = value.as_deref().map(i64::decode).transpose()?;
                    match &value {
                        Some(bytes) => self.groups.put(WATERMARK, Entry::Raw(bytes.clone())),
                        None => {
                            self.groups.remove(WATERMARK);
                        }
                    }
                }
                SCHEMA => {
                    self.converter = None;
                    match &value {
                        Some(bytes) => {
                            self.group_schema = Some(schema_from(bytes)?);
                            self.groups.put(SCHEMA, Entry::Raw(bytes.clone()));
                        }
                        None => {
                            self.group_schema = None;
                            self.groups.remove(SCHEMA);
                        }
                    }
                }
                _ if key.len() < 8 => {
                    bail!(
                        "operator `{}`: the state holds a key that is not an aggregate's (was it written by another kind of operator of the same name?)",
                        self.name
                    )
                }
                _ => {
                    let start = key_start(&key);
                    match &value {
                        Some(_) => {
                            self.open.entry(start).or_default().insert(key.clone());
                        }
                        None => {
                            if let Some(keys) = self.open.get_mut(&start) {
                                keys.remove(&key);
                                if keys.is_empty() {
                                    self.open.remove(&start);
                                }
                            }
                        }
                    }
                    self.groups.restore([(key, value)])?;
                }
            }
        }
        // Restored entries are not changes of this run.
        self.groups.accept();
        let _ = self.groups.take_changes();
        Ok(())
    }

    fn process(&mut self, batch: &RecordBatch) -> Result<Step> {
        let groups = self.group_rows(batch)?;
        let inputs = self.inputs(batch)?;
        let times = match &self.event_time {
            Some(column) => Some(event_times(batch, column, &self.name)?),
            None => None,
        };
        let mut late = Vec::new();
        let mut no_time = Vec::new();
        let mut latest = None;
        let mut key = Vec::with_capacity(64);
        let fresh = self.fresh(&inputs);
        // The open windows of the current row (reused: no allocation per row).
        let mut starts: Vec<i64> = Vec::new();
        for row in 0..batch.num_rows() {
            let group: &[u8] = groups.as_ref().map_or(&[], |g| g.row(row).data());
            starts.clear();
            match (&times, self.windows) {
                (Some(times), Some(windows)) => {
                    let Some(t) = times[row] else {
                        no_time.push(row);
                        continue;
                    };
                    latest = Some(latest.map_or(t, |l: i64| l.max(t)));
                    starts.extend(windows.starts(t).filter(|&s| {
                        self.watermark
                            .is_none_or(|w| s.saturating_add(windows.size) > w)
                    }));
                    if starts.is_empty() {
                        late.push(row);
                        continue;
                    }
                }
                _ => starts.push(WHOLE_INPUT),
            }
            for &start in &starts {
                key.clear();
                key.extend_from_slice(&start_key(start));
                key.extend_from_slice(group);
                if self.groups.get(&key).is_none() {
                    self.open.entry(start).or_default().insert(key.clone());
                }
                self.groups.update(
                    &key,
                    || Entry::Group(fresh.clone()),
                    |entry| {
                        if let Entry::Group(accs) = entry {
                            for (acc, input) in accs.0.iter_mut().zip(&inputs) {
                                update(acc, input, row);
                            }
                        }
                    },
                );
            }
        }
        // The watermark moves after the batch: rows of one batch are never
        // late relative to each other.
        if let Some(latest) = latest {
            let candidate = latest.saturating_sub(self.lateness);
            if self.watermark.is_none_or(|w| candidate > w) {
                self.watermark = Some(candidate);
                self.groups.put(WATERMARK, Entry::Raw(candidate.encode()));
            }
        }
        let output = self.close(false)?;
        let mut rejected = Vec::new();
        let column = self.event_time.clone().unwrap_or_default();
        if !late.is_empty() {
            let watermark = self.watermark.unwrap_or_default();
            let times = times.as_ref().expect("late rows have times");
            let reasons = late
                .iter()
                .map(|&row| {
                    let t = times[row].unwrap_or_default();
                    reason(
                        &self.name,
                        "late",
                        format!(
                            "event time {} ({column}) is late: every window holding it ended by the watermark {} (the latest event time minus allowed_lateness, {} ms), and was emitted",
                            format_ms(t),
                            format_ms(watermark),
                            self.lateness
                        ),
                    )
                })
                .collect();
            rejected.push(Rejected::take(batch, &late, reasons)?);
        }
        if !no_time.is_empty() {
            rejected.push(Rejected::missing_event_time(
                &self.name, &column, batch, &no_time,
            )?);
        }
        Ok(Step {
            output,
            kept: None,
            rejected,
            dropped: 0,
            late: late.len() as u64,
        })
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        // Windows closed early are closed for good: the watermark moves to
        // the last one's end, so that a later run's rows for them are late
        // rather than a second, partial row for the same window.
        let last_end = match self.windows {
            Some(w) => self
                .open
                .keys()
                .next_back()
                .map(|s| s.saturating_add(w.size)),
            None => None,
        };
        let closed = self.close(true)?;
        if let Some(end) = last_end
            && self.watermark.is_none_or(|w| end > w)
        {
            self.watermark = Some(end);
            self.groups.put(WATERMARK, Entry::Raw(end.encode()));
        }
        // With every group closed, nothing needs their schema any more
        // (the next batch brings it again).
        self.groups.remove(SCHEMA);
        self.group_schema = None;
        self.converter = None;
        Ok(closed)
    }

    fn take_changes(&mut self) -> Changes {
        self.groups.take_changes()
    }

    fn accept(&mut self) {
        self.groups.accept();
    }

    fn rollback(&mut self) {
        self.groups.rollback();
        // Rebuild the derived indexes from the restored map.
        self.open.clear();
        for (key, entry) in self.groups.iter() {
            if key.len() >= 8 && matches!(entry, Entry::Group(_)) {
                self.open
                    .entry(key_start(key))
                    .or_default()
                    .insert(key.clone());
            }
        }
        self.watermark = match self.groups.get(WATERMARK) {
            Some(Entry::Raw(bytes)) => i64::decode(bytes).ok(),
            _ => None,
        };
        if self.groups.get(SCHEMA).is_none() {
            self.group_schema = None;
            self.converter = None;
        }
    }

    fn state_size(&self) -> (u64, u64) {
        (self.groups.len() as u64, self.groups.bytes() as u64)
    }
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulators_round_trip() {
        let accs = Accs(vec![
            Acc::Count(3),
            Acc::SumI(None),
            Acc::MaxF(Some(2.5)),
            Acc::Mean { sum: 4.0, n: 2 },
            Acc::Distinct {
                values: [b"a".to_vec(), b"bc".to_vec()].into_iter().collect(),
                bytes: 11,
            },
        ]);
        assert_eq!(Accs::decode(&accs.encode()).unwrap(), accs);
        assert_eq!(key_start(&start_key(-5)), -5);
        assert!(start_key(-5) < start_key(3));
    }
}
