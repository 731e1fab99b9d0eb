//! Partitioned runs: one run per slice of time (a day, an hour, a month),
//! each reading and writing exactly its partition.
//!
//! A pipeline file becomes partitioned by using `${partition}` (and
//! optionally `${partition_start}`, `${partition_end}`) in its strings:
//!
//! ```toml
//! [partition]
//! every = "day"                       # hour | day (default) | month
//!
//! [source]
//! path = "landing/${partition}/*.csv"
//!
//! [sink]
//! path = "out/date=${partition}"
//! ```
//!
//! The variables are replaced in the file's text before it is parsed, so
//! they work in every string (paths, a PostgreSQL source query, a plugin's
//! config). A partition's value is made only of `A-Z a-z 0-9 - _ . : T`,
//! so replacing it can never break the TOML around it. `$${` writes a
//! literal `${`.
//!
//! Who gives the partition: `weir run --partition 2013-01-05`, `weir
//! backfill` (one run per partition of a range, [`crate::backfill`]) and a
//! schedule in `weir serve` (the last whole period before the run fires,
//! [`Every::previous`]). Times are the partition's own calendar (naive
//! local times): a schedule computes them in its time zone.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde::Deserialize;

/// `[partition]` in the pipeline file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PartitionSettings {
    /// The length of a partition. Default `day`.
    pub every: Every,
    /// How `${partition}` is written, as a chrono `strftime` format.
    /// Default: `%Y-%m-%d` (day), `%Y-%m-%dT%H` (hour), `%Y-%m` (month).
    pub format: Option<String>,
}

impl PartitionSettings {
    /// The format of `${partition}`, its default filled in.
    pub fn format(&self) -> &str {
        self.format.as_deref().unwrap_or(match self.every {
            Every::Hour => "%Y-%m-%dT%H",
            Every::Day => "%Y-%m-%d",
            Every::Month => "%Y-%m",
        })
    }

    /// The partition that starts at `start` (rounded down to a period).
    ///
    /// # Errors
    /// When the format makes a value with characters outside
    /// `A-Z a-z 0-9 - _ . : T` or an empty one.
    pub fn key(&self, start: NaiveDateTime) -> Result<PartitionKey, String> {
        let start = self.every.floor(start);
        let mut value = String::new();
        use std::fmt::Write;
        write!(value, "{}", start.format(self.format())).map_err(|_| {
            format!(
                "[partition] format `{}` is not a valid strftime format",
                self.format()
            )
        })?;
        if value.is_empty() || !value.chars().all(is_partition_char) {
            return Err(format!(
                "[partition] format `{}` makes `{value}`; a partition may hold only A-Z a-z 0-9 - _ . :",
                self.format()
            ));
        }
        Ok(PartitionKey {
            value,
            start,
            end: self.every.next(start),
        })
    }

    /// The partitions from the one holding `from` to the one holding `to`,
    /// both included, oldest first.
    ///
    /// # Errors
    /// A bound that is not a date (`2013-01-05`) or date-time
    /// (`2013-01-05T06:00`), `to` before `from`, more than
    /// [`MAX_PARTITIONS`] partitions, or a bad format.
    pub fn range(&self, from: &str, to: &str) -> Result<Vec<PartitionKey>, String> {
        let first = self.every.floor(parse_bound(from)?);
        let last = self.every.floor(parse_bound(to)?);
        if last < first {
            return Err(format!("--to {to} is before --from {from}"));
        }
        let mut keys = Vec::new();
        let mut at = first;
        while at <= last {
            if keys.len() == MAX_PARTITIONS {
                return Err(format!(
                    "{from} to {to} holds more than {MAX_PARTITIONS} partitions; split the range"
                ));
            }
            keys.push(self.key(at)?);
            at = self.every.next(at);
        }
        Ok(keys)
    }
}

/// Most partitions one backfill may cover (about 27 years of days).
pub const MAX_PARTITIONS: usize = 10_000;

/// The length of a partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Every {
    /// One hour.
    Hour,
    /// One calendar day (default).
    #[default]
    Day,
    /// One calendar month.
    Month,
}

impl Every {
    /// The start of the period holding `at`.
    pub fn floor(self, at: NaiveDateTime) -> NaiveDateTime {
        let date = at.date();
        match self {
            Every::Hour => {
                date.and_time(NaiveTime::from_hms_opt(at.hour(), 0, 0).expect("an hour"))
            }
            Every::Day => date.and_time(NaiveTime::MIN),
            Every::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1)
                .expect("the first of a month")
                .and_time(NaiveTime::MIN),
        }
    }

    /// The start of the period after the one starting at `start`.
    pub fn next(self, start: NaiveDateTime) -> NaiveDateTime {
        match self {
            Every::Hour => start + Duration::hours(1),
            Every::Day => start + Duration::days(1),
            Every::Month => {
                let (year, month) = match start.month() {
                    12 => (start.year() + 1, 1),
                    m => (start.year(), m + 1),
                };
                NaiveDate::from_ymd_opt(year, month, 1)
                    .expect("the first of a month")
                    .and_time(NaiveTime::MIN)
            }
        }
    }

    /// The start of the last whole period before `at`: what a run fired at
    /// `at` processes (a daily run at 02:00 on the 6th processes the 5th).
    pub fn previous(self, at: NaiveDateTime) -> NaiveDateTime {
        let current = self.floor(at);
        let mut probe = current - Duration::seconds(1);
        probe = self.floor(probe);
        probe
    }
}

fn is_partition_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

fn parse_bound(text: &str) -> Result<NaiveDateTime, String> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_time(NaiveTime::MIN));
    }
    for format in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(at);
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d") {
        return Ok(date.and_time(NaiveTime::MIN));
    }
    Err(format!(
        "`{text}` is not a date (2013-01-05), a month (2013-01) or a date-time (2013-01-05T06:00)"
    ))
}

/// One partition: its value and the period it covers, `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKey {
    /// `${partition}`: the start formatted by [`PartitionSettings::format`].
    pub value: String,
    /// `${partition_start}`, written `YYYY-MM-DDTHH:MM:SS`.
    pub start: NaiveDateTime,
    /// `${partition_end}` (excluded), written like the start.
    pub end: NaiveDateTime,
}

impl PartitionKey {
    /// A partition given by value only (`weir run --partition VALUE`):
    /// its start and end are parsed from the value when it is a date,
    /// month or date-time, else they are the Unix epoch.
    ///
    /// # Errors
    /// A value with characters outside `A-Z a-z 0-9 - _ . :`.
    pub fn given(value: &str, settings: &PartitionSettings) -> Result<PartitionKey, String> {
        if value.is_empty() || !value.chars().all(is_partition_char) {
            return Err(format!(
                "partition `{value}`: a partition may hold only A-Z a-z 0-9 - _ . :"
            ));
        }
        let start = NaiveDateTime::parse_from_str(value, settings.format())
            .ok()
            .or_else(|| {
                NaiveDate::parse_from_str(value, settings.format())
                    .ok()
                    .map(|d| d.and_time(NaiveTime::MIN))
            })
            .or_else(|| parse_bound(value).ok())
            .map(|at| settings.every.floor(at))
            .unwrap_or_default();
        Ok(PartitionKey {
            value: value.to_string(),
            start,
            end: settings.every.next(start),
        })
    }
}

const VARIABLES: [&str; 3] = ["partition", "partition_start", "partition_end"];

/// Whether `text` uses any partition variable.
pub fn uses_partition(text: &str) -> bool {
    substitute(text, None).is_err_and(|e| e.needs_partition)
}

/// Why a file's variables could not be replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstituteError {
    /// 1-based line of the first problem.
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// The text uses a partition variable and none was given.
    pub needs_partition: bool,
}

/// `text` with `${partition}`, `${partition_start}` and `${partition_end}`
/// replaced by `key`'s, and `$${` by `${`.
///
/// # Errors
/// An unknown variable or an unclosed `${`, or (without `key`) any use of
/// a partition variable.
pub fn substitute(text: &str, key: Option<&PartitionKey>) -> Result<String, SubstituteError> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let line = text[..text.len() - tail.len()].matches('\n').count() + 1;
        if let Some(after) = tail.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(body) = tail.strip_prefix("${") else {
            out.push('$');
            rest = &tail[1..];
            continue;
        };
        let Some(close) = body.find('}') else {
            return Err(SubstituteError {
                line,
                message: "`${` is not closed by `}` (write `$${` for a literal `${`)".into(),
                needs_partition: false,
            });
        };
        let name = &body[..close];
        if name.starts_with("secret:") {
            // A secret's reference, filled when the pipeline is built.
            out.push_str("${");
            out.push_str(name);
            out.push('}');
            rest = &body[close + 1..];
            continue;
        }
        if !VARIABLES.contains(&name) {
            return Err(SubstituteError {
                line,
                message: format!(
                    "unknown variable `${{{name}}}`; the variables are ${{partition}}, ${{partition_start}} and ${{partition_end}} (write `$${{` for a literal `${{`)"
                ),
                needs_partition: false,
            });
        }
        let Some(key) = key else {
            return Err(SubstituteError {
                line,
                message: format!(
                    "this pipeline is partitioned (it uses `${{{name}}}`): give the partition with `weir run --partition VALUE`, or run it with `weir backfill` or a schedule"
                ),
                needs_partition: true,
            });
        };
        match name {
            "partition" => out.push_str(&key.value),
            "partition_start" => out.push_str(&key.start.format("%Y-%m-%dT%H:%M:%S").to_string()),
            _ => out.push_str(&key.end.format("%Y-%m-%dT%H:%M:%S").to_string()),
        }
        rest = &body[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> NaiveDateTime {
        parse_bound(text).unwrap()
    }

    #[test]
    fn variables_are_replaced_and_escapes_kept() {
        let settings = PartitionSettings::default();
        let key = settings.key(at("2013-01-05T13:00")).unwrap();
        let text = "path = \"in/${partition}/*.csv\"\nq = \"t >= '${partition_start}' and t < '${partition_end}' $${x} $5\"";
        assert_eq!(
            substitute(text, Some(&key)).unwrap(),
            "path = \"in/2013-01-05/*.csv\"\nq = \"t >= '2013-01-05T00:00:00' and t < '2013-01-06T00:00:00' ${x} $5\""
        );
        let error = substitute(text, None).unwrap_err();
        assert!(error.needs_partition && error.line == 1, "{error:?}");
        assert!(uses_partition(text));
        assert!(!uses_partition("a = \"$${partition}\""));
        let unknown = substitute("a = 1\nb = \"${date}\"", Some(&key)).unwrap_err();
        assert_eq!(unknown.line, 2);
        assert!(!unknown.needs_partition);
    }

    #[test]
    fn ranges_cover_whole_periods_inclusive() {
        let days = PartitionSettings::default();
        let keys = days.range("2013-01-30", "2013-02-02").unwrap();
        let values: Vec<_> = keys.iter().map(|k| k.value.as_str()).collect();
        assert_eq!(
            values,
            ["2013-01-30", "2013-01-31", "2013-02-01", "2013-02-02"]
        );
        let months = PartitionSettings {
            every: Every::Month,
            format: None,
        };
        let values: Vec<_> = months
            .range("2012-11", "2013-02-10")
            .unwrap()
            .into_iter()
            .map(|k| (k.value, k.end))
            .collect();
        assert_eq!(values.len(), 4);
        assert_eq!(values[1], ("2012-12".to_string(), at("2013-01-01")));
        assert!(days.range("2013-02-02", "2013-01-01").is_err());
        let hours = PartitionSettings {
            every: Every::Hour,
            format: Some("%Y%m%d_%H".into()),
        };
        assert_eq!(
            hours.key(at("2013-01-05T06:59")).unwrap().value,
            "20130105_06"
        );
        let bad = PartitionSettings {
            every: Every::Day,
            format: Some("%Y/%m/%d".into()),
        };
        assert!(
            bad.key(at("2013-01-05")).is_err(),
            "a slash would escape a directory"
        );
    }

    #[test]
    fn a_run_processes_the_last_whole_period() {
        assert_eq!(
            Every::Day.previous(at("2013-01-06T02:00")),
            at("2013-01-05")
        );
        assert_eq!(Every::Day.previous(at("2013-01-06")), at("2013-01-05"));
        assert_eq!(
            Every::Hour.previous(at("2013-01-06T00:05")),
            at("2013-01-05T23:00")
        );
        assert_eq!(
            Every::Month.previous(at("2013-01-01T01:00")),
            at("2012-12-01")
        );
        let given = PartitionKey::given("2013-01-05", &PartitionSettings::default()).unwrap();
        assert_eq!(
            (given.start, given.end),
            (at("2013-01-05"), at("2013-01-06"))
        );
        assert!(PartitionKey::given("../x", &PartitionSettings::default()).is_err());
    }
}
