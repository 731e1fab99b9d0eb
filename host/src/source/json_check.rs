//! A linear scan of one JSON record, run before arrow-json sees it.
//!
//! arrow-json recurses over nested values (its tape serialisation, used
//! when it builds an error message, overflowed the stack on a line of
//! about 40,000 nested arrays and aborted the whole process), and it
//! coerces some out-of-range numbers silently: an integer below the int64
//! minimum became the minimum, `1e400` in a float column became null, and
//! `1.5` in an integer column became `1`. [`check_record`] finds both
//! kinds of problem with one pass over the bytes, without recursion and
//! without allocating, so such a record is quarantined with a reason
//! instead.

use arrow::datatypes::{DataType, Schema};

/// Deepest nesting of arrays and objects a record may have. serde_json's
/// default recursion limit is the same, so a JSON body and a JSON Lines
/// body accept the same records.
pub const MAX_NESTING_DEPTH: usize = 128;

/// What [`check_record`] knows of a schema: every column name, and the
/// numeric columns' types (whose values it range-checks).
#[derive(Debug, Default, Clone)]
pub struct Columns {
    /// Column names as bytes, in schema order.
    names: Vec<Box<[u8]>>,
    types: Vec<DataType>,
}

impl Columns {
    /// The columns of `schema`.
    pub fn of(schema: &Schema) -> Columns {
        Columns {
            names: schema
                .fields()
                .iter()
                .map(|f| f.name().as_bytes().into())
                .collect(),
            types: schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect(),
        }
    }

    /// The column named `raw` (a key's bytes as written, quotes excluded),
    /// trying the `hint`-th column first: records usually list their keys
    /// in schema order, so that one comparison is all it takes. Hashing
    /// every key cost a third of JSON Lines decoding.
    fn find(&self, raw: &[u8], hint: usize) -> Option<usize> {
        if self.names.get(hint).is_some_and(|name| **name == *raw) {
            return Some(hint);
        }
        if raw.contains(&b'\\') {
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            let name: String = serde_json::from_slice(&quoted).ok()?;
            return self.names.iter().position(|n| **n == *name.as_bytes());
        }
        self.names.iter().position(|name| **name == *raw)
    }
}

/// What [`check_record`] found in a record it let through.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordCheck {
    /// Top-level fields whose key is not a column of the schema.
    pub unknown_fields: u32,
    /// The first such key.
    pub first_unknown: Option<String>,
}

/// Checks one record's text: nesting at most [`MAX_NESTING_DEPTH`] deep,
/// and every number given directly as a top-level field of a numeric
/// column within that column's range (integers: whole and representable;
/// floats: finite). Counts the top-level keys that are not columns.
/// Malformed JSON passes: the decoder reports it.
///
/// # Errors
/// Why the record must be quarantined, in a sentence naming the field.
pub fn check_record(text: &[u8], columns: &Columns) -> Result<RecordCheck, String> {
    let mut found = RecordCheck::default();
    let mut depth = 0usize;
    // Whether the top-level value is an object, and the key whose value
    // comes next at depth 1.
    let mut top_is_object = false;
    let mut expecting_key = false;
    // The column of the key whose value comes next, and how many keys
    // came before it.
    let mut column: Option<usize> = None;
    let mut keys = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let start = i + 1;
                i = string_end(text, start);
                if depth == 1 && top_is_object && expecting_key {
                    let raw = &text[start..i.saturating_sub(1).max(start)];
                    expecting_key = false;
                    column = columns.find(raw, keys);
                    keys += 1;
                    if column.is_none() {
                        found.unknown_fields += 1;
                        if found.first_unknown.is_none() {
                            found.first_unknown = Some(String::from_utf8_lossy(raw).into_owned());
                        }
                    }
                }
                continue;
            }
            open @ (b'{' | b'[') => {
                depth += 1;
                if depth > MAX_NESTING_DEPTH {
                    return Err(format!("nested more than {MAX_NESTING_DEPTH} levels deep"));
                }
                if depth == 1 {
                    top_is_object = open == b'{';
                    expecting_key = top_is_object;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expecting_key = top_is_object,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                if depth == 1
                    && let Some(index) = column
                    && let data_type = &columns.types[index]
                    && (data_type.is_integer() || data_type.is_floating())
                {
                    check_number(&columns.names[index], &text[start..i], data_type)?;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(found)
}

/// The keys of a JSON object record's top level, in the order written
/// (escapes decoded); empty for anything else. One pass, no recursion.
pub fn top_level_keys(text: &[u8]) -> Vec<String> {
    let mut keys = Vec::new();
    let mut depth = 0usize;
    let mut top_is_object = false;
    let mut expecting_key = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let start = i;
                i = string_end(text, i + 1);
                if depth == 1 && top_is_object && expecting_key {
                    if let Ok(key) = serde_json::from_slice::<String>(&text[start..i]) {
                        keys.push(key);
                    }
                    expecting_key = false;
                }
                continue;
            }
            open @ (b'{' | b'[') => {
                depth += 1;
                if depth == 1 {
                    top_is_object = open == b'{';
                    expecting_key = top_is_object;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expecting_key = top_is_object,
            _ => {}
        }
        i += 1;
    }
    keys
}

/// The index just past the string starting at `start` (after its opening
/// quote), or the end of `text` when it is unterminated.
fn string_end(text: &[u8], start: usize) -> usize {
    let mut i = start;
    while let Some(found) = text
        .get(i..)
        .and_then(|rest| memchr::memchr2(b'\\', b'"', rest))
    {
        i += found;
        match text[i] {
            b'\\' => i += 2,
            _ => return i + 1,
        }
    }
    text.len()
}

/// Checks the number literal `literal` of column `name` against its type.
///
/// This runs on every number of every record, so the common cases return
/// before any parsing: a float without an exponent (and under 300 digits)
/// is finite, and an int64 of at most 18 digits fits.
fn check_number(name: &[u8], literal: &[u8], data_type: &DataType) -> Result<(), String> {
    let Ok(literal) = std::str::from_utf8(literal) else {
        return Ok(());
    };
    let has_exponent = literal.contains(['e', 'E']);
    if data_type.is_floating() && !has_exponent && literal.len() < 300 {
        return Ok(());
    }
    if *data_type == DataType::Int64 && !has_exponent && !literal.contains('.') {
        let digits = literal.strip_prefix('-').unwrap_or(literal);
        if digits.len() <= 18 {
            return Ok(());
        }
    }
    let name = String::from_utf8_lossy(name);
    let out_of_range = || format!("field `{name}`: {literal} is out of range for {data_type}");
    if data_type.is_floating() {
        return match literal.parse::<f64>() {
            Ok(value) if !value.is_finite() => Err(out_of_range()),
            Ok(value) if *data_type == DataType::Float32 && (value as f32).is_infinite() => {
                Err(out_of_range())
            }
            _ => Ok(()),
        };
    }
    let (min, max) = integer_range(data_type);
    if !literal.contains(['.', 'e', 'E']) {
        let digits = literal.strip_prefix('-').unwrap_or(literal);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            // Malformed: the decoder reports it.
            return Ok(());
        }
        return match literal.parse::<i128>() {
            Ok(value) if (min..=max).contains(&value) => Ok(()),
            // Outside the column's range, or too many digits for i128.
            _ => Err(out_of_range()),
        };
    }
    match literal.parse::<f64>() {
        Ok(value) if value.fract() != 0.0 => Err(format!(
            "field `{name}`: {literal} is not a whole number, but the column is {data_type}"
        )),
        Ok(value) if !(min as f64..=max as f64).contains(&value) => Err(out_of_range()),
        _ => Ok(()),
    }
}

/// The smallest and largest value of an integer type.
fn integer_range(data_type: &DataType) -> (i128, i128) {
    match data_type {
        DataType::Int8 => (i8::MIN.into(), i8::MAX.into()),
        DataType::Int16 => (i16::MIN.into(), i16::MAX.into()),
        DataType::Int32 => (i32::MIN.into(), i32::MAX.into()),
        DataType::UInt8 => (0, u8::MAX.into()),
        DataType::UInt16 => (0, u16::MAX.into()),
        DataType::UInt32 => (0, u32::MAX.into()),
        DataType::UInt64 => (0, u64::MAX.into()),
        _ => (i64::MIN.into(), i64::MAX.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;

    fn columns() -> Columns {
        Columns::of(&Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]))
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let deep = format!("{{\"s\":{}{}}}", "[".repeat(40_000), "]".repeat(40_000));
        let error = check_record(deep.as_bytes(), &columns()).unwrap_err();
        assert!(error.contains("128 levels"), "{error}");
        let fine = format!("{{\"s\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert!(check_record(fine.as_bytes(), &columns()).is_ok());
    }

    #[test]
    fn unknown_top_level_fields_are_counted() {
        let found = check_record(br#"{"n": 1, "extra": {"n": 2}, "more": 3}"#, &columns()).unwrap();
        assert_eq!(found.unknown_fields, 2);
        assert_eq!(found.first_unknown.as_deref(), Some("extra"));
    }

    #[test]
    fn top_level_keys_come_in_written_order() {
        let text = br#"{"z": 1, "a": {"inner": [1, {"no": 2}]}, "m\u0041": "x,y", "b": [1]}"#;
        assert_eq!(top_level_keys(text), ["z", "a", "mA", "b"]);
        assert!(top_level_keys(b"[1, 2]").is_empty());
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let text = format!("{{\"s\":\"{}\\\"\"}}", "[".repeat(1000));
        assert!(check_record(text.as_bytes(), &columns()).is_ok());
    }

    #[test]
    fn out_of_range_numbers_are_named() {
        let c = columns();
        for (text, expected) in [
            (r#"{"n": -99999999999999999999}"#, "out of range for Int64"),
            (r#"{"n": 9223372036854775808}"#, "out of range for Int64"),
            (r#"{"s": "a", "n": 1.5}"#, "not a whole number"),
            (r#"{"n": -1e20}"#, "out of range for Int64"),
            (r#"{"x": 1e400}"#, "out of range for Float64"),
            (r#"{"x": -1e400}"#, "out of range for Float64"),
        ] {
            let error = check_record(text.as_bytes(), &c).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        for text in [
            r#"{"n": -9223372036854775808, "x": 1e300}"#,
            r#"{"n": 2.0, "x": 5}"#,
            r#"{"s": "1e400", "other": 1e400, "nested": {"n": 1e400}}"#,
            r#"[1e400]"#,
        ] {
            assert!(check_record(text.as_bytes(), &c).is_ok(), "{text}");
        }
    }
}
