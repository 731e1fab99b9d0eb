//! Subject templates of the NATS sink: `flights.clean.{carrier}` names
//! each row's subject from its columns.

use anyhow::{Context, Result, bail};
use arrow::array::{Array, StringArray};
use arrow::record_batch::RecordBatch;

/// One part of a subject template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Column(String),
}

/// A subject with `{column}` placeholders.
#[derive(Debug, Clone)]
pub struct SubjectTemplate {
    parts: Vec<Part>,
}

impl SubjectTemplate {
    /// Parses `template`.
    ///
    /// # Errors
    /// An unclosed `{` or an empty `{}`.
    pub fn parse(template: &str) -> Result<SubjectTemplate> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .with_context(|| format!("subject `{template}`: a `{{` is not closed"))?;
            let column = &rest[open + 1..open + close];
            if column.is_empty() {
                bail!("subject `{template}`: `{{}}` names no column");
            }
            parts.push(Part::Column(column.to_string()));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(SubjectTemplate { parts })
    }

    /// The columns it names.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c.as_str()),
            Part::Text(_) => None,
        })
    }

    /// Each row's subject.
    ///
    /// # Errors
    /// A named column that `batch` lacks.
    pub fn subjects(&self, batch: &RecordBatch) -> Result<Vec<String>> {
        let mut values: Vec<Option<StringArray>> = Vec::new();
        for part in &self.parts {
            values.push(match part {
                Part::Text(_) => None,
                Part::Column(name) => {
                    let column = batch.column_by_name(name).with_context(|| {
                        format!(
                            "the sink subject names column `{name}`, which the output does not have"
                        )
                    })?;
                    let text = arrow::compute::cast(column, &arrow::datatypes::DataType::Utf8)?;
                    Some(
                        text.as_any()
                            .downcast_ref::<StringArray>()
                            .expect("cast to utf8")
                            .clone(),
                    )
                }
            });
        }
        Ok((0..batch.num_rows())
            .map(|row| {
                let mut subject = String::new();
                for (part, value) in self.parts.iter().zip(&values) {
                    match (part, value) {
                        (Part::Text(text), _) => subject.push_str(text),
                        (Part::Column(_), Some(array)) => {
                            if array.is_null(row) {
                                subject.push_str("_null");
                            } else {
                                subject.push_str(&token(array.value(row)));
                            }
                        }
                        (Part::Column(_), None) => unreachable!("a column part has values"),
                    }
                }
                subject
            })
            .collect())
    }
}

/// `value` as one subject token.
fn token(value: &str) -> String {
    if value.is_empty() {
        return "_".into();
    }
    value
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' | ' ' | '\t' | '\r' | '\n' => '_',
            c => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::SubjectTemplate;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    #[test]
    fn subjects_from_columns() {
        let template = SubjectTemplate::parse("flights.{carrier}.{month}").unwrap();
        let batch = RecordBatch::try_from_iter([
            (
                "carrier",
                Arc::new(StringArray::from(vec![Some("UA"), None, Some("a.b c")])) as ArrayRef,
            ),
            ("month", Arc::new(Int64Array::from(vec![1, 2, 3]))),
        ])
        .unwrap();
        assert_eq!(
            template.subjects(&batch).unwrap(),
            vec!["flights.UA.1", "flights._null.2", "flights.a_b_c.3"]
        );
        assert!(SubjectTemplate::parse("a.{b").is_err());
        assert!(SubjectTemplate::parse("a.{}").is_err());
    }
}
