//! `[[operators]]` of a pipeline file: the built-in stateful operators and
//! their settings, checked before anything runs.

use serde::Deserialize;

use super::time::millis;

/// Default [`OperatorConfig::max_state_bytes`]: 256 MiB of keys and values
/// per operator. Operators hold their state in memory while they run (and
/// in the state store between runs), so the cap bounds the memory a
/// pipeline's state may take.
pub const DEFAULT_MAX_STATE_BYTES: u64 = 256 * 1024 * 1024;

/// Most windows one row may count in (`window / hop`).
pub const MAX_WINDOWS_PER_ROW: i64 = 1000;

/// Which built-in operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorKind {
    /// Drops (or quarantines) rows whose key was seen before.
    Dedupe,
    /// Groups rows by key columns (and event-time windows) and emits one
    /// row of measures per group when its window closes.
    Aggregate,
    /// Keeps the latest row per key of a table input and joins it onto
    /// every row of the pipeline's input with that key (enrichment from a
    /// changing table).
    Latest,
}

impl OperatorKind {
    /// Its name in the pipeline file.
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorKind::Dedupe => "dedupe",
            OperatorKind::Aggregate => "aggregate",
            OperatorKind::Latest => "latest",
        }
    }
}

/// What `latest` does with a row whose key has no table row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// Passed on with nulls in the joined columns (a left join; default).
    #[default]
    Null,
    /// Left out of the output and counted (an inner join).
    Drop,
    /// Sent to the quarantine with the error kind `no_match`.
    Quarantine,
}

/// Default [`OperatorConfig::refresh`]: how often `latest` looks for new
/// or changed table files.
pub const DEFAULT_REFRESH: &str = "1m";

/// What `dedupe` does with a duplicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Duplicates {
    /// Left out of the output and counted (default).
    #[default]
    Drop,
    /// Sent to the quarantine with the error kind `duplicate`.
    Quarantine,
}

/// One `[[operators]]` entry. Operators run after the plugin stages, in
/// input order, in the order written.
///
/// ```toml
/// [[operators]]
/// name = "unique"
/// kind = "dedupe"
/// key = ["carrier", "flight", "time_hour"]
/// event_time = "time_hour"   # optional: duplicates only within `within`
/// within = "1d"
///
/// [[operators]]
/// name = "per_carrier_month"
/// kind = "aggregate"
/// group_by = ["carrier", "year", "month"]
/// measures = ["count(*) as flights", "mean(arr_delay) as mean_arr_delay"]
///
/// [[operators]]
/// name = "plane"
/// kind = "latest"
/// key = ["tailnum"]
/// table = { format = "csv", path = "planes/*.csv" }
/// columns = ["manufacturer", "model", "seats"]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Unique name (among stages and operators); also the namespace of
    /// its state.
    pub name: String,
    /// `dedupe`, `aggregate` or `latest`.
    pub kind: OperatorKind,
    /// dedupe: the columns whose values identify a record. latest: the
    /// columns, of both the input and the table, that a table row is
    /// joined on.
    #[serde(default)]
    pub key: Vec<String>,
    /// dedupe, aggregate: the event-time column (timestamp, date, or
    /// integer milliseconds).
    pub event_time: Option<String>,
    /// dedupe with `event_time`: a key is a duplicate only within this
    /// duration of its first row's event time (e.g. `1d`); older keys are
    /// forgotten. Default: forever.
    pub within: Option<String>,
    /// dedupe without `event_time`: a key is remembered this long after it
    /// was first seen, by the wall clock (e.g. `7d`). Default: forever.
    pub ttl: Option<String>,
    /// dedupe: `drop` (default) or `quarantine`.
    #[serde(default)]
    pub duplicates: Duplicates,
    /// aggregate: the grouping columns (none: one group).
    #[serde(default)]
    pub group_by: Vec<String>,
    /// aggregate: `FUNCTION(COLUMN) [as NAME]`, with FUNCTION one of
    /// `count` (`count(*)` counts rows), `sum`, `min`, `max`, `mean`,
    /// `count_distinct` (exact), `approx_count_distinct` (a HyperLogLog++
    /// sketch). Nulls are ignored as in SQL.
    #[serde(default)]
    pub measures: Vec<String>,
    /// aggregate: window length over `event_time` (e.g. `1h`). Without a
    /// window, the whole input is one window that closes when the input
    /// ends (`weir run` only).
    pub window: Option<String>,
    /// aggregate: distance between window starts for hopping windows
    /// (default: `window`, i.e. tumbling).
    pub hop: Option<String>,
    /// aggregate: how far behind the latest event time a row may be and
    /// still count (default `0s`). The watermark is the latest event time
    /// seen minus this; a window closes when the watermark passes its end,
    /// and a row whose every window closed is quarantined as `late`.
    pub allowed_lateness: Option<String>,
    /// latest: the table input, written like `[source]` (`format` `csv`,
    /// `jsonl` or `parquet`, `path` a file or glob relative to the
    /// pipeline file, and the same CSV and `schema` settings). Kept as TOML
    /// here and read as a source config by [`crate::config`].
    pub table: Option<toml::Table>,
    /// latest: the table columns joined onto each row (default: every
    /// table column but the key).
    #[serde(default)]
    pub columns: Vec<String>,
    /// latest: prepended to the joined columns' names (default none), e.g.
    /// `plane_` when the input has columns of the same names.
    pub prefix: Option<String>,
    /// latest: the table column that orders versions of a key's row (an
    /// `updated_at` timestamp, a version number): a row replaces the kept
    /// one only when its value is at least as large. Without it, the row
    /// read last wins (files in sorted path order, rows in file order).
    pub order_by: Option<String>,
    /// latest: `null` (default: joined columns are null), `drop`, or
    /// `quarantine` (error kind `no_match`) for rows whose key has no
    /// table row.
    #[serde(default)]
    pub missing: Missing,
    /// latest: how often to look for new or changed table files, a
    /// duration (default [`DEFAULT_REFRESH`]). They are also looked for
    /// before the first batch.
    pub refresh: Option<String>,
    /// The pipeline file's directory, which `table.path` is relative to
    /// (set when the pipeline is built, not read from the file).
    #[serde(skip)]
    pub base_dir: std::path::PathBuf,
    /// Largest state, in bytes of keys and values (default
    /// [`DEFAULT_MAX_STATE_BYTES`]). A batch that would exceed it is
    /// quarantined as `state_quota` and changes nothing.
    pub max_state_bytes: Option<u64>,
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// Rows (`count(*)`) or non-null values.
    Count,
    /// Sum of non-null values (null when there are none).
    Sum,
    /// Smallest non-null value.
    Min,
    /// Largest non-null value.
    Max,
    /// Arithmetic mean of non-null values.
    Mean,
    /// Number of distinct non-null values (exact).
    CountDistinct,
    /// Number of distinct non-null values, estimated with a HyperLogLog++
    /// sketch (Heule, Nunkesser and Hall, EDBT 2013; the
    /// `cardinality-estimator` crate, precision 12): exact up to a few
    /// hundred values, then within about 1.6% (1.04/√4096, one standard
    /// error), in at most about 3 KiB per group whatever the cardinality.
    ApproxCountDistinct,
}

/// One parsed measure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measure {
    /// The function.
    pub function: Function,
    /// Its column (`None`: `count(*)`).
    pub column: Option<String>,
    /// The output column's name.
    pub name: String,
}

impl Measure {
    /// Parses `FUNCTION(COLUMN) [as NAME]`.
    ///
    /// # Errors
    /// Anything else, with what is expected.
    pub fn parse(text: &str) -> Result<Measure, String> {
        let expected = "expected FUNCTION(COLUMN) [as NAME] with FUNCTION one of count, sum, min, max, mean, count_distinct, approx_count_distinct";
        let (call, name) = match text.split_once(" as ") {
            Some((call, name)) => (call.trim(), Some(name.trim())),
            None => (text.trim(), None),
        };
        let (function, rest) = call
            .split_once('(')
            .ok_or_else(|| format!("`{text}`: {expected}"))?;
        let column = rest
            .strip_suffix(')')
            .ok_or_else(|| format!("`{text}`: {expected}"))?
            .trim();
        let function = match function.trim() {
            "count" => Function::Count,
            "sum" => Function::Sum,
            "min" => Function::Min,
            "max" => Function::Max,
            "mean" | "avg" => Function::Mean,
            "count_distinct" => Function::CountDistinct,
            "approx_count_distinct" => Function::ApproxCountDistinct,
            other => return Err(format!("`{text}`: unknown function `{other}`; {expected}")),
        };
        let column = match column {
            "*" if function == Function::Count => None,
            "*" => return Err(format!("`{text}`: only count takes `*`")),
            "" => return Err(format!("`{text}`: {expected}")),
            column => Some(column.to_string()),
        };
        let name = match name {
            Some("") => return Err(format!("`{text}`: empty name after `as`")),
            Some(name) => name.to_string(),
            None => {
                let f = call.split('(').next().unwrap_or_default().trim();
                match &column {
                    Some(c) => format!("{f}_{c}"),
                    None => f.to_string(),
                }
            }
        };
        Ok(Measure {
            function,
            column,
            name,
        })
    }
}

impl OperatorConfig {
    /// The problems of this entry (`key` is its place in the file, like
    /// `operators[0]`), each naming the setting.
    pub fn problems(&self, key: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut not_for = |setting: &str, set: bool| {
            if set {
                problems.push(format!(
                    "{key}.{setting}: not a setting of a {} operator",
                    self.kind.as_str()
                ));
            }
        };
        match self.kind {
            OperatorKind::Dedupe => {
                not_for("group_by", !self.group_by.is_empty());
                not_for("measures", !self.measures.is_empty());
                not_for("window", self.window.is_some());
                not_for("hop", self.hop.is_some());
                not_for("allowed_lateness", self.allowed_lateness.is_some());
            }
            OperatorKind::Aggregate | OperatorKind::Latest => {
                if self.kind == OperatorKind::Aggregate {
                    not_for("key", !self.key.is_empty());
                } else {
                    not_for("event_time", self.event_time.is_some());
                    not_for("group_by", !self.group_by.is_empty());
                    not_for("measures", !self.measures.is_empty());
                    not_for("window", self.window.is_some());
                    not_for("hop", self.hop.is_some());
                    not_for("allowed_lateness", self.allowed_lateness.is_some());
                }
                not_for("within", self.within.is_some());
                not_for("ttl", self.ttl.is_some());
                not_for("duplicates", self.duplicates != Duplicates::Drop);
            }
        }
        if self.kind != OperatorKind::Latest {
            not_for("table", self.table.is_some());
            not_for("columns", !self.columns.is_empty());
            not_for("prefix", self.prefix.is_some());
            not_for("order_by", self.order_by.is_some());
            not_for("missing", self.missing != Missing::Null);
            not_for("refresh", self.refresh.is_some());
        }
        let mut duration = |setting: &str, value: &Option<String>| {
            if let Some(value) = value
                && let Err(e) = millis(value)
            {
                problems.push(format!("{key}.{setting}: {e}"));
            }
        };
        duration("within", &self.within);
        duration("ttl", &self.ttl);
        duration("window", &self.window);
        duration("hop", &self.hop);
        duration("refresh", &self.refresh);
        if let Some(lateness) = &self.allowed_lateness
            && humantime::parse_duration(lateness).is_err()
        {
            problems.push(format!(
                "{key}.allowed_lateness: `{lateness}` is not a duration like 0s, 30s or 5m"
            ));
        }
        match self.kind {
            OperatorKind::Dedupe => {
                if self.key.is_empty() {
                    problems.push(format!(
                        "{key}.key: a dedupe operator needs the key columns, e.g. key = [\"id\"]"
                    ));
                }
                if self.within.is_some() && self.event_time.is_none() {
                    problems.push(format!(
                        "{key}.within: needs event_time (or use ttl for wall-clock time)"
                    ));
                }
                if self.ttl.is_some() && self.event_time.is_some() {
                    problems.push(format!(
                        "{key}.ttl: with event_time, use within (event time), not ttl (wall clock)"
                    ));
                }
            }
            OperatorKind::Aggregate => {
                if self.measures.is_empty() {
                    problems.push(format!(
                        "{key}.measures: an aggregate needs at least one measure, e.g. measures = [\"count(*) as rows\"]"
                    ));
                }
                let mut names: Vec<String> = self.group_by.clone();
                if self.window.is_some() {
                    names.extend(["window_start".to_string(), "window_end".to_string()]);
                }
                for (i, text) in self.measures.iter().enumerate() {
                    match Measure::parse(text) {
                        Ok(measure) => {
                            if names.contains(&measure.name) {
                                problems.push(format!(
                                    "{key}.measures[{i}]: output column `{}` appears twice; name it with `as`",
                                    measure.name
                                ));
                            }
                            names.push(measure.name);
                        }
                        Err(e) => problems.push(format!("{key}.measures[{i}]: {e}")),
                    }
                }
                if self.window.is_some() != self.event_time.is_some() {
                    problems.push(format!(
                        "{key}: window and event_time go together (a window is a span of event time)"
                    ));
                }
                if self.hop.is_some() && self.window.is_none() {
                    problems.push(format!("{key}.hop: needs window"));
                }
                if self.allowed_lateness.is_some() && self.window.is_none() {
                    problems.push(format!("{key}.allowed_lateness: needs window"));
                }
                if let (Some(window), Some(hop)) = (&self.window, &self.hop)
                    && let (Ok(size), Ok(hop_ms)) = (millis(window), millis(hop))
                    && (hop_ms > size || size % hop_ms != 0 || size / hop_ms > MAX_WINDOWS_PER_ROW)
                {
                    problems.push(format!(
                        "{key}.hop: `{hop}` must divide the window `{window}` (hopping windows overlap by whole hops), at most {MAX_WINDOWS_PER_ROW} times (each row counts in window / hop windows)"
                    ));
                }
            }
            OperatorKind::Latest => {
                if self.key.is_empty() {
                    problems.push(format!(
                        "{key}.key: a latest operator needs the key columns it joins on, e.g. key = [\"customer_id\"]"
                    ));
                }
                if self.table.is_none() {
                    problems.push(format!(
                        "{key}.table: a latest operator needs its table, e.g. table = {{ format = \"csv\", path = \"customers/*.csv\" }}"
                    ));
                }
                for column in &self.columns {
                    if self.key.contains(column) {
                        problems.push(format!(
                            "{key}.columns: `{column}` is a key column; the input has it already"
                        ));
                    }
                }
            }
        }
        problems
    }

    /// The parsed measures (after [`OperatorConfig::problems`] found none).
    pub fn parsed_measures(&self) -> Vec<Measure> {
        self.measures
            .iter()
            .filter_map(|m| Measure::parse(m).ok())
            .collect()
    }

    /// The settings that give the operator's state its meaning (kind, key
    /// and event-time columns, groups, measures, windows); state written
    /// under other settings cannot be reused.
    pub fn state_settings(&self) -> String {
        let mut settings = format!(
            "{:?} key={:?} event_time={:?} group_by={:?} measures={:?} window={:?} hop={:?}",
            self.kind,
            self.key,
            self.event_time,
            self.group_by,
            self.measures,
            self.window,
            self.hop
        );
        if self.kind == OperatorKind::Latest {
            // The kept rows hold these columns, in this order.
            settings.push_str(&format!(
                " columns={:?} order_by={:?}",
                self.columns, self.order_by
            ));
        }
        settings
    }

    /// [`OperatorConfig::refresh`] or its default, in milliseconds.
    pub fn refresh_ms(&self) -> i64 {
        millis(self.refresh.as_deref().unwrap_or(DEFAULT_REFRESH)).unwrap_or(60_000)
    }

    /// [`OperatorConfig::max_state_bytes`] or its default.
    pub fn state_quota(&self) -> u64 {
        self.max_state_bytes.unwrap_or(DEFAULT_MAX_STATE_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_parse_with_and_without_names() {
        let m = Measure::parse("mean(arr_delay) as mean_delay").unwrap();
        assert_eq!(m.function, Function::Mean);
        assert_eq!(m.column.as_deref(), Some("arr_delay"));
        assert_eq!(m.name, "mean_delay");
        assert_eq!(Measure::parse("count(*)").unwrap().name, "count");
        assert_eq!(
            Measure::parse("count_distinct(tailnum)").unwrap().name,
            "count_distinct_tailnum"
        );
        assert!(
            Measure::parse("median(x)")
                .unwrap_err()
                .contains("unknown function")
        );
        assert!(Measure::parse("sum(*)").is_err());
    }
}
