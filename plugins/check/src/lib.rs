//! # `check`: declarative validation rules
//!
//! A validator plugin. Each rule checks one column of every row and fails
//! the rows that break it with the rule's `id` and a message naming the
//! value, so the host quarantines each with the reason (a row breaking
//! several rules gets their ids and messages in rule order). Nulls pass
//! every check except `not_null` and `not_null_when` (so "null or in
//! 1–2400" is just a `range`). Range bounds compare as Rust's `f64` does:
//! `-0.0` equals `0.0` and `NaN` breaks every bound.
//!
//! The rules run as the host's compute kernels (`weir:plugin/compute`) and
//! fail rows with `reject-each`, which writes the messages on the host: no
//! column crosses into the plugin (it declares `reads = []`) and nothing is
//! built per failing row in wasm. A `range` over dates or timestamps and an
//! `allowed` list over numbers or booleans read their column and compare in
//! the plugin.
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
use weir_sdk::compute::{self, ArithOp, BoolOp, CmpOp, Col, MatchOp, TextOp};
use weir_sdk::{Column, ColumnValues, DataType, Error, RecordBatch, Validate, Verdict};

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

/// `a or b`, where `a` may be nothing yet.
fn or(a: Option<Col>, b: Col) -> Result<Col, Error> {
    match a {
        None => Ok(b),
        Some(a) => a.logic(BoolOp::Or, b),
    }
}

impl Bounds {
    /// Where a float64 (or int64, compared as float64) column breaks a
    /// bound: a boolean column, null where the value is. The host's
    /// comparisons use IEEE 754's total order, so -0.0 is made 0.0 first
    /// (`-0.0 >= 0` holds, as in Rust) and NaN, which that order puts
    /// above `inf` (or, negative, below `-inf`), is caught on its own:
    /// NaN breaks every bound, as `contains` says.
    fn broken(&self, values: &Col, float: bool) -> Result<Col, Error> {
        let x = if float {
            values.arith(ArithOp::Add, 0.0)?
        } else {
            *values
        };
        let mut broken = None;
        for (bound, op) in [
            (self.gt, CmpOp::Le),
            (self.ge, CmpOp::Lt),
            (self.lt, CmpOp::Ge),
            (self.le, CmpOp::Gt),
        ] {
            if let Some(b) = bound {
                broken = Some(or(broken, x.compare(op, b + 0.0)?)?);
            }
        }
        let broken = broken.expect("compile() requires a bound");
        if !float {
            return Ok(broken);
        }
        let nan = x
            .gt(f64::INFINITY)?
            .logic(BoolOp::Or, x.lt(f64::NEG_INFINITY)?)?;
        broken.logic(BoolOp::Or, nan)
    }
}

impl Rule {
    /// Fails this rule's rows through the host's kernels (see
    /// [`Check_::reads`]): nothing crosses into the plugin except the
    /// columns of the few checks that still loop here (`range` over dates
    /// and timestamps, `allowed` over numbers and booleans).
    fn run(&self, rows: usize) -> Result<(), Error> {
        let column = self.input(&self.column)?;
        let data_type = column.info().map_err(|e| self.named(e))?.data_type;
        let id = self.id.as_str();
        match &self.check {
            Check::NotNull => {
                compute::reject(&column.is_null()?, id, &format!("{} is null", self.column))
            }
            Check::NotNullWhen(other) => {
                let mask = column
                    .is_null()?
                    .logic(BoolOp::AndNot, self.input(other)?.is_null()?)?;
                let message = format!("{} is null although {other} is not", self.column);
                compute::reject(&mask, id, &message)
            }
            Check::Range(bounds) => {
                let prefix = format!("{} = ", self.column);
                let suffix = format!(" is not {}", bounds.describe());
                match data_type {
                    // Integers are shown as integers: exact past 2^53,
                    // where an f64 would round them.
                    DataType::Int64 | DataType::Float64 => {
                        let float = data_type == DataType::Float64;
                        let mask = bounds.broken(&column, float)?;
                        compute::reject_each(&mask, id, &prefix, &column, &suffix)
                    }
                    DataType::Date32 | DataType::Timestamp(_) => {
                        let values = column.read()?;
                        self.reject_texts(rows, &prefix, &suffix, |r| {
                            values
                                .numeric(r)
                                .filter(|v| !bounds.contains(*v))
                                .map(|v| v.to_string())
                        })
                    }
                    _ => Err(self.wrong_type("a number")),
                }
            }
            Check::Allowed(values) => {
                let prefix = format!("{} = `", self.column);
                let suffix = "` is not one of the allowed values";
                if data_type == DataType::Utf8 {
                    let mut allowed = None;
                    for value in values {
                        allowed = Some(or(allowed, column.eq(value.as_str())?)?);
                    }
                    let mask = match allowed {
                        Some(allowed) => allowed.not()?,
                        // Nothing is allowed: every value fails.
                        None => column.is_null()?.not()?,
                    };
                    return compute::reject_each(&mask, id, &prefix, &column, suffix);
                }
                // Numbers and booleans compare as the text they are shown
                // as (`1.0` is `1`), which the host's kernels do not write.
                let read = column.read()?;
                self.reject_texts(rows, &prefix, suffix, |r| {
                    cell_text(&read, r).filter(|v| !values.contains(v))
                })
            }
            Check::Regex(regex) => {
                if data_type != DataType::Utf8 {
                    return Err(self.wrong_type("utf8"));
                }
                let mask = column.matches(MatchOp::Regex, regex.as_str())?.not()?;
                let prefix = format!("{} = `", self.column);
                let suffix = format!("` does not match {}", regex.as_str());
                compute::reject_each(&mask, id, &prefix, &column, &suffix)
            }
            Check::Length { min, max } => {
                if data_type != DataType::Utf8 {
                    return Err(self.wrong_type("utf8"));
                }
                let length = column.text(TextOp::Length)?;
                let mut mask = None;
                if *min > 0 {
                    mask = Some(length.lt(*min as i64)?);
                }
                if let Ok(max) = i64::try_from(*max) {
                    mask = Some(or(mask, length.gt(max)?)?);
                }
                let Some(mask) = mask else {
                    return Ok(());
                };
                let prefix = format!("{} has ", self.column);
                let suffix = format!(" characters, outside {min}..={max}");
                compute::reject_each(&mask, id, &prefix, &length, &suffix)
            }
        }
    }

    /// Fails the rows for which `failing` gives the text to show, worked
    /// out in the plugin: the texts cross to the host as one column.
    fn reject_texts(
        &self,
        rows: usize,
        prefix: &str,
        suffix: &str,
        failing: impl Fn(usize) -> Option<String>,
    ) -> Result<(), Error> {
        let texts = Col::from_column(&Column::from_utf8((0..rows).map(failing)))?;
        compute::reject_each(&texts.is_null()?.not()?, &self.id, prefix, &texts, suffix)
    }

    /// The batch's column `name`, as a handle.
    fn input(&self, name: &str) -> Result<Col, Error> {
        Col::input(name).map_err(|e| self.named(e))
    }

    /// `error`, saying which rule met it.
    fn named(&self, error: Error) -> Error {
        Error::InvalidInput(format!("rule `{}`: {}", self.id, message(error)))
    }

    fn wrong_type(&self, wanted: &str) -> Error {
        Error::InvalidInput(format!(
            "rule `{}`: column `{}` is not {wanted}",
            self.id, self.column
        ))
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
    /// Nothing crosses into the plugin: every rule takes its columns as
    /// host-side handles and fails rows with `reject`/`reject-each`, so
    /// the host formats each failing row's message. On a bad day, when
    /// most rows fail, a verdict built in wasm and lifted per row was the
    /// larger part of the stage's time.
    fn reads() -> Result<Option<Vec<String>>, Error> {
        rules()?;
        Ok(Some(Vec::new()))
    }

    /// Runs the rules in their order, so that a row failing several has
    /// their ids and messages joined in that order. Returns no verdicts:
    /// the rules' rejections reach the host through the kernels.
    fn validate(batch: RecordBatch) -> Result<Vec<Verdict>, Error> {
        for rule in rules()? {
            rule.run(batch.len())?;
        }
        Ok(Vec::new())
    }
}

weir_sdk::export_validate!(Check_);

#[cfg(test)]
mod tests {
    use super::*;

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
}
