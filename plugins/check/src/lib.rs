//! # `check`: declarative validation rules
//!
//! A validator plugin. Each rule checks one column of every row and, when the
//! row fails, returns a verdict with the rule's `id` so the host quarantines
//! that row with the reason. Nulls pass every check except `not_null` and
//! `not_null_when` (so "null or in 1–2400" is just a `range`).
//!
//! | `check` | keys | a row fails when |
//! |---|---|---|
//! | `not_null` | — | `column` is null |
//! | `not_null_when` | `other` | `other` is not null but `column` is |
//! | `range` | `gt`, `ge`, `lt`, `le` (numbers; any subset) | the value is outside the bounds |
//! | `allowed` | `values` (strings or numbers) | the value is not one of `values` |
//! | `regex` | `pattern` | the text does not match `pattern` (Rust `regex` syntax, unanchored unless you anchor it) |
//! | `length` | `min`, `max` (characters) | the text is shorter or longer |
//!
//! Example stage:
//!
//! ```toml
//! [[stages]]
//! name = "validate"
//! kind = "validate"
//! plugin = "builtin:check"
//! [[stages.config.rules]]
//! id = "month_range"
//! column = "month"
//! check = "range"
//! ge = 1
//! le = 12
//! ```
//!
//! Errors: a malformed rule (unknown `check`, bad regex, missing key) is
//! `invalid-config`; a rule on a missing column or one of the wrong type is
//! `invalid-input`. Both name the rule.

use std::sync::OnceLock;

use regex::Regex;
use serde::Deserialize;
use weir_sdk::{Column, ColumnValues, Error, RecordBatch, Validate, Verdict};

/// The stage configuration: an ordered list of rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    rules: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// One rule as written in the pipeline file. (`deny_unknown_fields` does not
/// work through `flatten`, so [`parse_rule`] checks the keys itself.)
#[derive(Debug, Deserialize)]
struct RuleConfig {
    /// Identifier reported in the quarantine's `rule` column.
    id: String,
    /// The column checked.
    column: String,
    #[serde(flatten)]
    check: CheckConfig,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "check", rename_all = "snake_case")]
enum CheckConfig {
    NotNull,
    NotNullWhen {
        other: String,
    },
    Range {
        gt: Option<f64>,
        ge: Option<f64>,
        lt: Option<f64>,
        le: Option<f64>,
    },
    Allowed {
        values: Vec<serde_json::Value>,
    },
    Regex {
        pattern: String,
    },
    Length {
        min: Option<usize>,
        max: Option<usize>,
    },
}

/// A rule ready to run: regexes compiled, allowed values normalised.
struct Rule {
    id: String,
    column: String,
    check: Check,
}

enum Check {
    NotNull,
    NotNullWhen(String),
    Range(Bounds),
    Allowed(Vec<String>),
    Regex(Regex),
    Length { min: usize, max: usize },
}

#[derive(Debug, Clone, Copy)]
struct Bounds {
    gt: Option<f64>,
    ge: Option<f64>,
    lt: Option<f64>,
    le: Option<f64>,
}

impl Bounds {
    fn contains(&self, v: f64) -> bool {
        self.gt.is_none_or(|b| v > b)
            && self.ge.is_none_or(|b| v >= b)
            && self.lt.is_none_or(|b| v < b)
            && self.le.is_none_or(|b| v <= b)
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = [
            ("> ", self.gt),
            (">= ", self.ge),
            ("< ", self.lt),
            ("<= ", self.le),
        ]
        .into_iter()
        .filter_map(|(op, b)| b.map(|b| format!("{op}{b}")))
        .collect();
        parts.join(" and ")
    }
}

/// The keys each `check` accepts besides `id`, `column` and `check`.
fn check_keys(check: &CheckConfig) -> &'static [&'static str] {
    match check {
        CheckConfig::NotNull => &[],
        CheckConfig::NotNullWhen { .. } => &["other"],
        CheckConfig::Range { .. } => &["gt", "ge", "lt", "le"],
        CheckConfig::Allowed { .. } => &["values"],
        CheckConfig::Regex { .. } => &["pattern"],
        CheckConfig::Length { .. } => &["min", "max"],
    }
}

fn parse_rule(
    index: usize,
    raw: serde_json::Map<String, serde_json::Value>,
) -> Result<RuleConfig, Error> {
    let name = raw
        .get("id")
        .and_then(|v| v.as_str())
        .map_or_else(|| format!("rules[{index}]"), |id| format!("rule `{id}`"));
    let rule: RuleConfig = serde_json::from_value(serde_json::Value::Object(raw.clone()))
        .map_err(|e| Error::InvalidConfig(format!("{name}: {e}")))?;
    let allowed = check_keys(&rule.check);
    if let Some(key) = raw.keys().find(|k| {
        !["id", "column", "check"].contains(&k.as_str()) && !allowed.contains(&k.as_str())
    }) {
        return Err(Error::InvalidConfig(format!(
            "{name}: unknown key `{key}` (this check takes: {})",
            allowed.join(", ")
        )));
    }
    Ok(rule)
}

fn compile(config: Config) -> Result<Vec<Rule>, Error> {
    config
        .rules
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let rule = parse_rule(index, raw)?;
            let check = match rule.check {
                CheckConfig::NotNull => Check::NotNull,
                CheckConfig::NotNullWhen { other } => Check::NotNullWhen(other),
                CheckConfig::Range { gt, ge, lt, le } => {
                    if [gt, ge, lt, le].iter().all(Option::is_none) {
                        return Err(Error::InvalidConfig(format!(
                            "rule `{}`: a range needs at least one of gt, ge, lt, le",
                            rule.id
                        )));
                    }
                    Check::Range(Bounds { gt, ge, lt, le })
                }
                CheckConfig::Allowed { values } => {
                    Check::Allowed(values.iter().map(json_text).collect())
                }
                CheckConfig::Regex { pattern } => {
                    Check::Regex(Regex::new(&pattern).map_err(|e| {
                        Error::InvalidConfig(format!(
                            "rule `{}`: bad regex `{pattern}`: {e}",
                            rule.id
                        ))
                    })?)
                }
                CheckConfig::Length { min, max } => Check::Length {
                    min: min.unwrap_or(0),
                    max: max.unwrap_or(usize::MAX),
                },
            };
            Ok(Rule {
                id: rule.id,
                column: rule.column,
                check,
            })
        })
        .collect()
}

/// A JSON scalar as the text it is compared by (`"AA"` → `AA`, `3` → `3`).
fn json_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The value at `row` as text for `allowed`, or `None` when null.
fn cell_text(column: &Column, row: usize) -> Option<String> {
    match &column.values {
        ColumnValues::Utf8(_) => column.as_utf8()?.get(row).map(str::to_string),
        ColumnValues::Int64(_) => column.as_int64()?.get(row).map(|v| v.to_string()),
        ColumnValues::Float64(_) => column.as_float64()?.get(row).map(|v| v.to_string()),
        ColumnValues::Boolean(_) => column.as_boolean(row + 1)?.get(row).map(|v| v.to_string()),
        _ => None,
    }
}

impl Rule {
    fn run(&self, batch: &RecordBatch, verdicts: &mut Vec<Verdict>) -> Result<(), Error> {
        let column = batch
            .column(&self.column)
            .map_err(|e| Error::InvalidInput(format!("rule `{}`: {}", self.id, message(e))))?;
        let mut fail = |row: usize, message: String| {
            verdicts.push(Verdict {
                row: row as u32,
                rule: self.id.clone(),
                message,
            })
        };
        let rows = batch.len();
        match &self.check {
            Check::NotNull => (0..rows)
                .filter(|&r| column.is_null(r))
                .for_each(|r| fail(r, format!("{} is null", self.column))),
            Check::NotNullWhen(other) => {
                let other_column = batch.column(other).map_err(|e| {
                    Error::InvalidInput(format!("rule `{}`: {}", self.id, message(e)))
                })?;
                (0..rows)
                    .filter(|&r| !other_column.is_null(r) && column.is_null(r))
                    .for_each(|r| {
                        fail(
                            r,
                            format!("{} is null although {other} is not", self.column),
                        )
                    });
            }
            Check::Range(bounds) => {
                if !matches!(
                    column.values,
                    ColumnValues::Int64(_)
                        | ColumnValues::Float64(_)
                        | ColumnValues::Date32(_)
                        | ColumnValues::Timestamp(_)
                ) {
                    return Err(self.wrong_type("a number"));
                }
                // The message's fixed parts are formatted once per batch,
                // not per failing row: formatting runs as wasm under fuel.
                let message = Message::new(
                    format!("{} = ", self.column),
                    format!(" is not {}", bounds.describe()),
                );
                if let Some(ints) = column.as_int64() {
                    // Integers are shown as integers: exact past 2^53, where
                    // an f64 would round them, and cheaper to format.
                    for r in 0..rows {
                        if let Some(v) = ints.get(r).filter(|&v| !bounds.contains(v as f64)) {
                            fail(r, message.with(v));
                        }
                    }
                } else {
                    for r in 0..rows {
                        if let Some(v) = column.numeric(r).filter(|v| !bounds.contains(*v)) {
                            fail(r, message.with(Float(v)));
                        }
                    }
                }
            }
            Check::Allowed(values) => {
                let message = Message::new(
                    format!("{} = `", self.column),
                    "` is not one of the allowed values".to_string(),
                );
                for r in 0..rows {
                    if let Some(v) = cell_text(column, r).filter(|v| !values.contains(v)) {
                        fail(r, message.with(v));
                    }
                }
            }
            Check::Regex(regex) => {
                let text = column.as_utf8().ok_or_else(|| self.wrong_type("utf8"))?;
                let message = Message::new(
                    format!("{} = `", self.column),
                    format!("` does not match {}", regex.as_str()),
                );
                for r in 0..rows {
                    if let Some(v) = text.get(r).filter(|v| !regex.is_match(v)) {
                        fail(r, message.with(v));
                    }
                }
            }
            Check::Length { min, max } => {
                let text = column.as_utf8().ok_or_else(|| self.wrong_type("utf8"))?;
                let message = Message::new(
                    format!("{} has ", self.column),
                    format!(" characters, outside {min}..={max}"),
                );
                for r in 0..rows {
                    if let Some(n) = text
                        .get(r)
                        .map(|v| v.chars().count())
                        .filter(|n| n < min || n > max)
                    {
                        fail(r, message.with(n));
                    }
                }
            }
        }
        Ok(())
    }

    fn wrong_type(&self, wanted: &str) -> Error {
        Error::InvalidInput(format!(
            "rule `{}`: column `{}` is not {wanted}",
            self.id, self.column
        ))
    }
}

/// A failure message whose only per-row part is the value: `prefix`,
/// the value, `suffix`.
struct Message {
    prefix: String,
    suffix: String,
}

impl Message {
    fn new(prefix: String, suffix: String) -> Message {
        Message { prefix, suffix }
    }

    fn with(&self, value: impl std::fmt::Display) -> String {
        use std::fmt::Write;
        let mut text = String::with_capacity(self.prefix.len() + 24 + self.suffix.len());
        text.push_str(&self.prefix);
        let _ = write!(text, "{value}");
        text.push_str(&self.suffix);
        text
    }
}

/// An f64 shown exactly as its `Display` does (the shortest digits that
/// read back as the same value, never an exponent), computed with zmij's
/// Schubfach formatter where the two agree: in wasm, under fuel, `core`'s
/// float formatting was the largest single cost of a batch whose rows
/// mostly fail a range rule.
struct Float(f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.0;
        if !value.is_finite() {
            return write!(f, "{value}");
        }
        let mut buffer = zmij::Buffer::new();
        let text = buffer.format_finite(value);
        // zmij writes `.0` after an integral value (Display does not) and
        // an exponent for very small or large values (Display never does:
        // those fall back). With 16 or 17 significant digits more than one
        // shortest text can read back as the value, and the two formatters
        // may pick different ones; with at most 15 there is only one.
        let text = text.strip_suffix(".0").unwrap_or(text);
        let significant = text
            .bytes()
            .filter(u8::is_ascii_digit)
            .skip_while(|&b| b == b'0')
            .count();
        if text.contains('e') || significant > 15 {
            return write!(f, "{value}");
        }
        f.write_str(text)
    }
}

fn message(error: Error) -> String {
    match error {
        Error::InvalidConfig(m) | Error::InvalidInput(m) | Error::Parse(m) | Error::Internal(m) => {
            m
        }
    }
}

/// Rules are compiled once per instance; a fresh instance recompiles them.
fn rules() -> Result<&'static [Rule], Error> {
    static RULES: OnceLock<Result<Vec<Rule>, Error>> = OnceLock::new();
    RULES
        .get_or_init(|| weir_sdk::config::<Config>().and_then(compile))
        .as_deref()
        .map_err(Clone::clone)
}

/// The `check` plugin.
pub struct Check_;

impl Validate for Check_ {
    /// Only the columns the rules name cross into the plugin.
    fn reads() -> Result<Option<Vec<String>>, Error> {
        let mut names: Vec<String> = Vec::new();
        for rule in rules()? {
            let other = match &rule.check {
                Check::NotNullWhen(other) => Some(other),
                _ => None,
            };
            for name in std::iter::once(&rule.column).chain(other) {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        Ok(Some(names))
    }

    fn validate(batch: RecordBatch) -> Result<Vec<Verdict>, Error> {
        let mut verdicts = Vec::new();
        for rule in rules()? {
            rule.run(&batch, &mut verdicts)?;
        }
        Ok(verdicts)
    }
}

weir_sdk::export_validate!(Check_);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_text_is_exactly_what_display_writes() {
        let mut special = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.1,
            1e-5,
            9.99e-6,
            1e16,
            9.999999999999998e15,
            1e300,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -12.345,
            100.0,
            2f64.powi(53) + 2.0,
        ];
        // Random bit patterns (every exponent) and three-decimal values
        // like the benchmark's, from a fixed xorshift sequence.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            special.push(f64::from_bits(state));
            special.push((state % 2_000_000) as f64 / 1000.0 - 1000.0);
        }
        for value in special {
            assert_eq!(Float(value).to_string(), value.to_string(), "{value:e}");
        }
    }

    #[test]
    fn bounds_and_config_shapes() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "rules": [
                {"id": "m", "column": "month", "check": "range", "ge": 1, "le": 12},
                {"id": "t", "column": "tailnum", "check": "regex", "pattern": "^N[0-9A-Z]{1,5}$"},
                {"id": "c", "column": "carrier", "check": "allowed", "values": ["AA", 9]}
            ]
        }))
        .unwrap();
        let rules = compile(config).unwrap();
        let Check::Range(bounds) = &rules[0].check else {
            panic!()
        };
        assert!(bounds.contains(1.0) && bounds.contains(12.0));
        assert!(!bounds.contains(0.0) && !bounds.contains(13.0));
        let Check::Allowed(values) = &rules[2].check else {
            panic!()
        };
        assert_eq!(values, &["AA".to_string(), "9".to_string()]);
    }

    #[test]
    fn unknown_key_is_reported() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "rules": [{"id": "m", "column": "month", "check": "range", "lte": 12}]
        }))
        .unwrap();
        let Err(Error::InvalidConfig(message)) = compile(config) else {
            panic!()
        };
        assert!(message.contains("unknown key `lte`"), "{message}");
    }

    #[test]
    fn bad_regex_names_the_rule() {
        let config: Config = serde_json::from_value(serde_json::json!({
            "rules": [{"id": "t", "column": "x", "check": "regex", "pattern": "("}]
        }))
        .unwrap();
        let Err(Error::InvalidConfig(message)) = compile(config) else {
            panic!()
        };
        assert!(message.contains("rule `t`"), "{message}");
    }

    #[test]
    fn regex_rule_passes_nulls_and_flags_mismatches() {
        let batch = RecordBatch::try_new(
            vec![weir_sdk::Field {
                name: "tailnum".into(),
                data_type: weir_sdk::DataType::Utf8,
                nullable: true,
            }],
            vec![Column::from_utf8([Some("N123"), None, Some("X99")])],
            3,
        )
        .unwrap();
        let rule = Rule {
            id: "t".into(),
            column: "tailnum".into(),
            check: Check::Regex(Regex::new("^N[0-9A-Z]{1,5}$").unwrap()),
        };
        let mut verdicts = Vec::new();
        rule.run(&batch, &mut verdicts).unwrap();
        assert_eq!(verdicts.len(), 1);
        assert_eq!(verdicts[0].row, 2);
    }

    #[test]
    fn range_messages_show_integers_exactly_and_floats_as_given() {
        let batch = RecordBatch::try_new(
            vec![
                weir_sdk::Field {
                    name: "id".into(),
                    data_type: weir_sdk::DataType::Int64,
                    nullable: true,
                },
                weir_sdk::Field {
                    name: "x".into(),
                    data_type: weir_sdk::DataType::Float64,
                    nullable: true,
                },
            ],
            vec![
                Column::from_int64([Some(9_007_199_254_740_993), None, Some(5)]),
                Column::from_float64([Some(-1.5), Some(2.0), None]),
            ],
            3,
        )
        .unwrap();
        let bounds = Bounds {
            gt: None,
            ge: Some(0.0),
            lt: None,
            le: Some(100.0),
        };
        let mut verdicts = Vec::new();
        for column in ["id", "x"] {
            let rule = Rule {
                id: column.into(),
                column: column.into(),
                check: Check::Range(bounds),
            };
            rule.run(&batch, &mut verdicts).unwrap();
        }
        let messages: Vec<(u32, &str)> = verdicts
            .iter()
            .map(|v| (v.row, v.message.as_str()))
            .collect();
        assert_eq!(
            messages,
            [
                (0, "id = 9007199254740993 is not >= 0 and <= 100"),
                (0, "x = -1.5 is not >= 0 and <= 100"),
            ]
        );
    }
}
