//! The NATS JetStream sink of a served stream pipeline: each output row is
//! published as one JSON message to a subject (templated from the row's
//! columns), with a `Nats-Msg-Id` derived from the source position of the
//! row, and the epoch commits only once the server acknowledged every
//! message.
//!
//! **Exactly once.** The message id of an output row is
//! `STREAM:SEQUENCE:K`: the source stream, the stream sequence of the
//! message the row came from, and the row's index among that message's
//! output rows. An epoch replayed after a crash (or by another worker,
//! after a redelivery) publishes the same ids, and the server drops them
//! as duplicates within the output stream's `duplicate_window` (default
//! 2 minutes; keep it above the consumer's `ack_wait` plus a restart). The
//! duplicates the server reported are counted
//! (`weir_nats_publish_duplicates_total`).

use std::future::IntoFuture;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, StringArray};
use arrow::record_batch::RecordBatch;
use async_nats::jetstream;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::nats::SinkSettings;

/// Acknowledgements awaited at once while publishing.
const IN_FLIGHT: usize = 4096;

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

/// What a publish did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Published {
    /// Messages the server stored.
    pub stored: u64,
    /// Messages the server dropped as duplicates of an earlier publish.
    pub duplicates: u64,
}

/// A connected NATS sink.
#[derive(Clone)]
pub struct NatsSink {
    context: jetstream::Context,
    template: Arc<SubjectTemplate>,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink").finish_non_exhaustive()
    }
}

impl NatsSink {
    /// Connects to the sink's servers.
    ///
    /// # Errors
    /// A malformed subject template, or no server reachable.
    pub async fn connect(settings: &SinkSettings, name: &str) -> Result<NatsSink> {
        let template = SubjectTemplate::parse(&settings.subject)?;
        let client = crate::nats::connect(&settings.servers, name).await?;
        Ok(NatsSink {
            context: jetstream::new(client),
            template: Arc::new(template),
        })
    }

    /// Publishes every row of `batch` as a JSON object, row `i` with
    /// message id `ids[i]`, and waits for every acknowledgement.
    ///
    /// # Errors
    /// A subject no stream captures, a refused or unacknowledged publish
    /// (the epoch then fails and its messages are redelivered; what was
    /// published is deduplicated on the replay).
    pub async fn publish(&self, batch: &RecordBatch, ids: &[String]) -> Result<Published> {
        let subjects = self.template.subjects(batch)?;
        let mut json = Vec::with_capacity(batch.num_rows() * 64);
        {
            let mut writer = arrow::json::LineDelimitedWriter::new(&mut json);
            writer.write(batch)?;
            writer.finish()?;
        }
        let json = bytes::Bytes::from(json);
        let mut published = Published::default();
        let mut pending = FuturesUnordered::new();
        let mut start = 0;
        for (row, subject) in subjects.into_iter().enumerate() {
            let end = start
                + memchr::memchr(b'\n', &json[start..]).context("a row without its JSON line")?;
            let payload = json.slice(start..end);
            start = end + 1;
            let message = jetstream::message::PublishMessage::build()
                .payload(payload)
                .message_id(&ids[row]);
            let ack = self
                .context
                .send_publish(subject.clone(), message)
                .await
                .with_context(|| format!("publishing to `{subject}`"))?;
            pending.push(ack.into_future());
            if pending.len() >= IN_FLIGHT {
                count(&mut published, pending.next().await)?;
            }
        }
        while let Some(ack) = pending.next().await {
            count(&mut published, Some(ack))?;
        }
        if published.duplicates > 0 {
            metrics::counter!("weir_nats_publish_duplicates_total").increment(published.duplicates);
        }
        Ok(published)
    }
}

fn count(
    published: &mut Published,
    ack: Option<Result<jetstream::publish::PublishAck, jetstream::context::PublishError>>,
) -> Result<()> {
    match ack {
        None => Ok(()),
        Some(Ok(ack)) => {
            if ack.duplicate {
                published.duplicates += 1;
            } else {
                published.stored += 1;
            }
            Ok(())
        }
        Some(Err(e)) => Err(anyhow::Error::new(e).context("a publish was not acknowledged")),
    }
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
