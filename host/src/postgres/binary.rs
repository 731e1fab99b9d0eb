//! PostgreSQL's binary `COPY` format, encoded straight from Arrow arrays and
//! decoded straight into Arrow builders, for weir's seven column types.
//!
//! The format (PostgreSQL documentation, "COPY", section "Binary Format"):
//! an 11-byte signature `PGCOPY\n\377\r\n\0`, a 32-bit flags field and a
//! 32-bit header-extension length (both 0 here); then one tuple per row: a
//! 16-bit field count, and per field a 32-bit byte length (−1 for null)
//! followed by the value in the type's binary "send" form; then a 16-bit −1
//! trailer. All integers are big-endian.
//!
//! | weir type   | Arrow                       | PostgreSQL                    | binary form                                  |
//! |-------------|-----------------------------|-------------------------------|----------------------------------------------|
//! | `boolean`   | `Boolean`                   | `boolean`                     | 1 byte                                       |
//! | `int64`     | `Int64`                     | `bigint` (reads `smallint`, `integer` too) | 8 bytes                          |
//! | `float64`   | `Float64`                   | `double precision` (reads `real`) | IEEE 754, 8 bytes                        |
//! | `utf8`      | `Utf8`                      | `text` (writes `varchar`, `char` too) | UTF-8 bytes                          |
//! | `binary`    | `Binary`                    | `bytea`                       | the bytes                                    |
//! | `date32`    | `Date32`                    | `date`                        | 4 bytes: days since 2000-01-01               |
//! | `timestamp` | `Timestamp(µs)` (with a zone: `timestamptz`) | `timestamp` / `timestamptz` | 8 bytes: µs since 2000-01-01 |
//!
//! Writing encodes each column through its typed array (no per-value
//! dynamic dispatch or boxing, the slow path rust-postgres issue 1114
//! measured for `BinaryCopyInWriter`).

use std::io::Read;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Array,
    Date32Builder, Float64Array, Float64Builder, Int64Array, Int64Builder, StringArray,
    StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use postgres::types::Type;

/// The 11-byte signature that opens a binary `COPY` stream.
pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// Days from 1970-01-01 (Arrow's epoch) to 2000-01-01 (PostgreSQL's).
pub const EPOCH_DAYS: i32 = 10_957;

/// Microseconds from 1970-01-01 to 2000-01-01.
pub const EPOCH_MICROS: i64 = EPOCH_DAYS as i64 * 86_400_000_000;

/// One of the seven column types on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `boolean`.
    Bool,
    /// `bigint`, `integer` or `smallint` (by the value's length).
    Int,
    /// `double precision` or `real` (by the value's length).
    Float,
    /// `text`, `varchar`, `char`, `name`.
    Text,
    /// `bytea`.
    Bytes,
    /// `date`.
    Date,
    /// `timestamp` (`None`) or `timestamptz` (`Some("UTC")`).
    Timestamp(Option<Arc<str>>),
}

impl Kind {
    /// The kind of an Arrow column of a weir type.
    ///
    /// # Errors
    /// A type that is none of the seven.
    pub fn of_arrow(data_type: &DataType) -> Result<Kind> {
        Ok(match data_type {
            DataType::Boolean => Kind::Bool,
            DataType::Int64 => Kind::Int,
            DataType::Float64 => Kind::Float,
            DataType::Utf8 => Kind::Text,
            DataType::Binary => Kind::Bytes,
            DataType::Date32 => Kind::Date,
            DataType::Timestamp(TimeUnit::Microsecond, zone) => Kind::Timestamp(zone.clone()),
            other => bail!("type {other} has no PostgreSQL mapping in weir"),
        })
    }

    /// The kind a PostgreSQL column is read as, `None` for a type weir
    /// reads as text (the source casts it with `::text`).
    pub fn of_pg(pg: &Type) -> Option<Kind> {
        Some(match *pg {
            Type::BOOL => Kind::Bool,
            Type::INT2 | Type::INT4 | Type::INT8 => Kind::Int,
            Type::FLOAT4 | Type::FLOAT8 => Kind::Float,
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => Kind::Text,
            Type::BYTEA => Kind::Bytes,
            Type::DATE => Kind::Date,
            Type::TIMESTAMP => Kind::Timestamp(None),
            Type::TIMESTAMPTZ => Kind::Timestamp(Some(Arc::from("UTC"))),
            _ => return None,
        })
    }

    /// The Arrow type this kind decodes into.
    pub fn arrow_type(&self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int => DataType::Int64,
            Kind::Float => DataType::Float64,
            Kind::Text => DataType::Utf8,
            Kind::Bytes => DataType::Binary,
            Kind::Date => DataType::Date32,
            Kind::Timestamp(zone) => DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
        }
    }

    /// The column type `CREATE TABLE` gets for this kind.
    pub fn create_type(&self) -> &'static str {
        match self {
            Kind::Bool => "boolean",
            Kind::Int => "bigint",
            Kind::Float => "double precision",
            Kind::Text => "text",
            Kind::Bytes => "bytea",
            Kind::Date => "date",
            Kind::Timestamp(None) => "timestamp",
            Kind::Timestamp(Some(_)) => "timestamptz",
        }
    }

    /// Whether binary values of this kind load into a column of type `pg`
    /// as they are (same binary form).
    pub fn loads_into(&self, pg: &Type) -> bool {
        match self {
            Kind::Bool => *pg == Type::BOOL,
            Kind::Int => *pg == Type::INT8,
            Kind::Float => *pg == Type::FLOAT8,
            Kind::Text => matches!(*pg, Type::TEXT | Type::VARCHAR | Type::BPCHAR),
            Kind::Bytes => *pg == Type::BYTEA,
            Kind::Date => *pg == Type::DATE,
            Kind::Timestamp(None) => *pg == Type::TIMESTAMP,
            Kind::Timestamp(Some(_)) => *pg == Type::TIMESTAMPTZ,
        }
    }
}

/// Casts the columns of `batch` that are not of the seven types but hold
/// the same values (narrower integers and floats, large strings and
/// binaries, other timestamp units) to theirs, so a Parquet file of
/// `int32` columns loads as `bigint`.
///
/// # Errors
/// A column of a type with no mapping (a list, a struct, a decimal).
pub fn normalize(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut changed = false;
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        let target = match field.data_type() {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(DataType::Int64),
            DataType::Float16 | DataType::Float32 => Some(DataType::Float64),
            DataType::LargeUtf8 | DataType::Utf8View => Some(DataType::Utf8),
            DataType::LargeBinary | DataType::BinaryView => Some(DataType::Binary),
            DataType::Timestamp(unit, zone) if *unit != TimeUnit::Microsecond => {
                Some(DataType::Timestamp(TimeUnit::Microsecond, zone.clone()))
            }
            other => {
                Kind::of_arrow(other).with_context(|| format!("column `{}`", field.name()))?;
                None
            }
        };
        match target {
            Some(target) => {
                changed = true;
                columns.push(arrow::compute::cast(column, &target)?);
                fields.push(field.as_ref().clone().with_data_type(target));
            }
            None => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    if !changed {
        return Ok(batch.clone());
    }
    Ok(RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )?)
}

/// Appends the stream's header to `out`.
pub fn write_header(out: &mut Vec<u8>) {
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
}

/// Appends the stream's trailer to `out`.
pub fn write_trailer(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

enum Column<'a> {
    Bool(&'a BooleanArray),
    Int(&'a Int64Array),
    Float(&'a Float64Array),
    Text(&'a StringArray),
    Bytes(&'a BinaryArray),
    Date(&'a Date32Array),
    Timestamp(&'a TimestampMicrosecondArray),
}

fn typed(column: &ArrayRef) -> Result<Column<'_>> {
    let any = column.as_any();
    let cast_error = || anyhow::anyhow!("unexpected array for {}", column.data_type());
    Ok(match Kind::of_arrow(column.data_type())? {
        Kind::Bool => Column::Bool(any.downcast_ref().ok_or_else(cast_error)?),
        Kind::Int => Column::Int(any.downcast_ref().ok_or_else(cast_error)?),
        Kind::Float => Column::Float(any.downcast_ref().ok_or_else(cast_error)?),
        Kind::Text => Column::Text(any.downcast_ref().ok_or_else(cast_error)?),
        Kind::Bytes => Column::Bytes(any.downcast_ref().ok_or_else(cast_error)?),
        Kind::Date => Column::Date(any.downcast_ref().ok_or_else(cast_error)?),
        Kind::Timestamp(_) => Column::Timestamp(any.downcast_ref().ok_or_else(cast_error)?),
    })
}

/// Appends one tuple per row of `batch` (rows × columns of the seven
/// types, see [`normalize`]) to `out`, and each tuple's start offset in
/// `out` to `row_starts`.
///
/// # Errors
/// A date or timestamp so far from 2000 that it does not fit the wire
/// form (naming the column and row), or a string longer than 1 GiB.
pub fn encode(batch: &RecordBatch, out: &mut Vec<u8>, row_starts: &mut Vec<u64>) -> Result<()> {
    let columns: Vec<Column> = batch.columns().iter().map(typed).collect::<Result<_>>()?;
    let count = i16::try_from(columns.len()).context("more than 32,767 columns")?;
    let schema = batch.schema();
    // Validity bitmaps once per batch, not a dynamic call per value.
    let nulls: Vec<Option<&arrow::buffer::NullBuffer>> =
        batch.columns().iter().map(|c| c.nulls()).collect();
    let out_of_range = |index: usize, row: usize, what: &str| {
        anyhow::anyhow!(
            "column `{}` row {row}: {what} out of range",
            schema.field(index).name()
        )
    };
    for row in 0..batch.num_rows() {
        row_starts.push(out.len() as u64);
        out.extend_from_slice(&count.to_be_bytes());
        for (index, column) in columns.iter().enumerate() {
            if nulls[index].is_some_and(|n| n.is_null(row)) {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            match column {
                Column::Bool(a) => {
                    out.extend_from_slice(&1i32.to_be_bytes());
                    out.push(a.value(row) as u8);
                }
                Column::Int(a) => {
                    out.extend_from_slice(&8i32.to_be_bytes());
                    out.extend_from_slice(&a.value(row).to_be_bytes());
                }
                Column::Float(a) => {
                    out.extend_from_slice(&8i32.to_be_bytes());
                    out.extend_from_slice(&a.value(row).to_be_bytes());
                }
                Column::Text(a) => put_bytes(out, a.value(row).as_bytes())?,
                Column::Bytes(a) => put_bytes(out, a.value(row))?,
                Column::Date(a) => {
                    let days = a
                        .value(row)
                        .checked_sub(EPOCH_DAYS)
                        .ok_or_else(|| out_of_range(index, row, "date"))?;
                    out.extend_from_slice(&4i32.to_be_bytes());
                    out.extend_from_slice(&days.to_be_bytes());
                }
                Column::Timestamp(a) => {
                    let micros = a
                        .value(row)
                        .checked_sub(EPOCH_MICROS)
                        .ok_or_else(|| out_of_range(index, row, "timestamp"))?;
                    out.extend_from_slice(&8i32.to_be_bytes());
                    out.extend_from_slice(&micros.to_be_bytes());
                }
            }
        }
    }
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<()> {
    let len = i32::try_from(bytes.len()).context("a value longer than 2 GiB")?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

enum Builder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(kind: &Kind) -> Builder {
        match kind {
            Kind::Bool => Builder::Bool(BooleanBuilder::new()),
            Kind::Int => Builder::Int(Int64Builder::new()),
            Kind::Float => Builder::Float(Float64Builder::new()),
            Kind::Text => Builder::Text(StringBuilder::new()),
            Kind::Bytes => Builder::Bytes(BinaryBuilder::new()),
            Kind::Date => Builder::Date(Date32Builder::new()),
            Kind::Timestamp(zone) => Builder::Timestamp(
                TimestampMicrosecondBuilder::new().with_timezone_opt(zone.clone()),
            ),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Bool(b) => b.append_null(),
            Builder::Int(b) => b.append_null(),
            Builder::Float(b) => b.append_null(),
            Builder::Text(b) => b.append_null(),
            Builder::Bytes(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
        }
    }

    fn append(&mut self, value: &[u8]) -> Result<()> {
        match self {
            Builder::Bool(b) => b.append_value(value.first().is_some_and(|v| *v != 0)),
            Builder::Int(b) => b.append_value(int(value)?),
            Builder::Float(b) => b.append_value(match value.len() {
                4 => f32::from_be_bytes(value.try_into()?) as f64,
                8 => f64::from_be_bytes(value.try_into()?),
                n => bail!("a float of {n} bytes"),
            }),
            Builder::Text(b) => b.append_value(
                std::str::from_utf8(value)
                    .context("text that is not UTF-8 (is the database's encoding UTF8?)")?,
            ),
            Builder::Bytes(b) => b.append_value(value),
            Builder::Date(b) => {
                let days = i32::from_be_bytes(value.try_into().context("a date of wrong length")?);
                if days == i32::MIN || days == i32::MAX {
                    bail!(
                        "±infinity has no Arrow date value; cast it in the query (e.g. NULLIF(col, 'infinity'))"
                    );
                }
                b.append_value(days.checked_add(EPOCH_DAYS).context("date out of range")?)
            }
            Builder::Timestamp(b) => {
                let micros =
                    i64::from_be_bytes(value.try_into().context("a timestamp of wrong length")?);
                if micros == i64::MIN || micros == i64::MAX {
                    bail!(
                        "±infinity has no Arrow timestamp value; cast it in the query (e.g. NULLIF(col, 'infinity'))"
                    );
                }
                b.append_value(
                    micros
                        .checked_add(EPOCH_MICROS)
                        .context("timestamp out of range")?,
                )
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Bytes(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

fn int(value: &[u8]) -> Result<i64> {
    Ok(match value.len() {
        2 => i16::from_be_bytes(value.try_into()?) as i64,
        4 => i32::from_be_bytes(value.try_into()?) as i64,
        8 => i64::from_be_bytes(value.try_into()?),
        n => bail!("an integer of {n} bytes"),
    })
}

/// The value of an integer, date or timestamp field as one `i64` (the
/// integer; days or microseconds since 1970), for cursor columns.
///
/// # Errors
/// A value of another width.
pub fn ordinal(kind: &Kind, value: &[u8]) -> Result<i64> {
    Ok(match kind {
        Kind::Int => int(value)?,
        Kind::Date => {
            i32::from_be_bytes(value.try_into().context("a date of wrong length")?) as i64
                + EPOCH_DAYS as i64
        }
        Kind::Timestamp(_) => {
            i64::from_be_bytes(value.try_into().context("a timestamp of wrong length")?)
                .saturating_add(EPOCH_MICROS)
        }
        other => bail!("a {other:?} column cannot be a cursor"),
    })
}

/// Reads a binary `COPY` stream row by row into Arrow builders: each row
/// is first read whole ([`Decoder::read_row`]), so that the caller can look
/// at a field ([`Decoder::field`]) before deciding where a batch ends, then
/// appended ([`Decoder::append_row`]).
pub struct Decoder<R: Read> {
    reader: std::io::BufReader<R>,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    builders: Vec<Builder>,
    row: Vec<u8>,
    fields: Vec<Option<(usize, usize)>>,
    rows: usize,
    started: bool,
}

impl<R: Read> Decoder<R> {
    /// A decoder of rows of `schema` (each column one of the seven types).
    ///
    /// # Errors
    /// A column of another type.
    pub fn new(reader: R, schema: SchemaRef) -> Result<Decoder<R>> {
        let kinds: Vec<Kind> = schema
            .fields()
            .iter()
            .map(|f| Kind::of_arrow(f.data_type()))
            .collect::<Result<_>>()?;
        Ok(Decoder {
            reader: std::io::BufReader::with_capacity(1 << 20, reader),
            builders: kinds.iter().map(Builder::new).collect(),
            kinds,
            schema,
            row: Vec::new(),
            fields: Vec::new(),
            rows: 0,
            started: false,
        })
    }

    /// Reads the next row; `false` at the trailer (or the end of input).
    ///
    /// # Errors
    /// A malformed stream, or one whose rows have another column count.
    pub fn read_row(&mut self) -> Result<bool> {
        if !self.started {
            let mut header = [0u8; 19];
            self.reader
                .read_exact(&mut header)
                .context("reading the COPY header")?;
            anyhow::ensure!(&header[..11] == SIGNATURE, "not a binary COPY stream");
            let extension = u32::from_be_bytes(header[15..19].try_into()?) as usize;
            std::io::copy(
                &mut (&mut self.reader).take(extension as u64),
                &mut std::io::sink(),
            )?;
            self.started = true;
        }
        let mut count = [0u8; 2];
        match self.reader.read_exact(&mut count) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
            Err(e) => return Err(e).context("reading a COPY row"),
        }
        let count = i16::from_be_bytes(count);
        if count == -1 {
            return Ok(false);
        }
        anyhow::ensure!(
            count as usize == self.kinds.len(),
            "a row of {count} fields, expected {}",
            self.kinds.len()
        );
        self.row.clear();
        self.fields.clear();
        for _ in 0..count {
            let mut len = [0u8; 4];
            self.reader.read_exact(&mut len)?;
            let len = i32::from_be_bytes(len);
            if len < 0 {
                self.fields.push(None);
                continue;
            }
            let start = self.row.len();
            self.row.resize(start + len as usize, 0);
            self.reader.read_exact(&mut self.row[start..])?;
            self.fields.push(Some((start, start + len as usize)));
        }
        Ok(true)
    }

    /// Field `index` of the row last read (`None`: null).
    pub fn field(&self, index: usize) -> Option<&[u8]> {
        self.fields[index].map(|(start, end)| &self.row[start..end])
    }

    /// Appends the row last read to the batch being built.
    ///
    /// # Errors
    /// A value that does not decode as its column's type.
    pub fn append_row(&mut self) -> Result<()> {
        for (index, builder) in self.builders.iter_mut().enumerate() {
            match self.fields[index] {
                None => builder.append_null(),
                Some((start, end)) => builder
                    .append(&self.row[start..end])
                    .with_context(|| format!("column `{}`", self.schema.field(index).name()))?,
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Rows appended since the last [`Decoder::finish_batch`].
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The rows appended so far as a batch (rows × the schema); the
    /// builders start over.
    ///
    /// # Errors
    /// Never in practice (the builders match the schema).
    pub fn finish_batch(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        self.rows = 0;
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }
}

/// Decodes the tuples `bytes` holds (no header or trailer) into one batch
/// of `schema`: how a sink gives the quarantine the rows the database
/// refused, from the bytes it sent.
///
/// # Errors
/// A malformed tuple.
pub fn decode_tuples(bytes: &[u8], schema: SchemaRef) -> Result<RecordBatch> {
    let mut stream = Vec::with_capacity(bytes.len() + 21);
    write_header(&mut stream);
    stream.extend_from_slice(bytes);
    write_trailer(&mut stream);
    let mut decoder = Decoder::new(stream.as_slice(), schema)?;
    while decoder.read_row()? {
        decoder.append_row()?;
    }
    decoder.finish_batch()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn every_type_round_trips_through_the_wire_form() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("b", DataType::Boolean, true),
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("x", DataType::Binary, true),
            Field::new("d", DataType::Date32, true),
            Field::new("t", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(BooleanArray::from(vec![Some(true), None, Some(false)])),
                Arc::new(Int64Array::from(vec![Some(i64::MIN), None, Some(i64::MAX)])),
                Arc::new(Float64Array::from(vec![Some(f64::MIN), None, Some(-0.5)])),
                Arc::new(StringArray::from(vec![Some("東京"), None, Some("")])),
                Arc::new(BinaryArray::from(vec![
                    Some(&b"\0\xff"[..]),
                    None,
                    Some(&b""[..]),
                ])),
                Arc::new(Date32Array::from(vec![Some(-719_162), None, Some(0)])),
                Arc::new(TimestampMicrosecondArray::from(vec![
                    Some(-62_135_596_800_000_000),
                    None,
                    Some(1),
                ])),
            ],
        )
        .unwrap();
        let mut out = Vec::new();
        let mut starts = Vec::new();
        encode(&batch, &mut out, &mut starts).unwrap();
        assert_eq!(starts.len(), 3);
        let decoded = decode_tuples(&out, schema).unwrap();
        assert_eq!(decoded, batch);
        let second =
            decode_tuples(&out[starts[1] as usize..starts[2] as usize], batch.schema()).unwrap();
        assert_eq!(second, batch.slice(1, 1));
    }
}
