//! The extract source: each file's bytes go to an extract plugin (a
//! component of the `extractor` world), which returns record batches; a file
//! it rejects becomes one quarantined row. One instance serves file after
//! file until it fails.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use arrow::record_batch::RecordBatch;

use super::{Source, SourceBatch, SourceItem};
use crate::plugin::{Limits, Plugin, PluginInstance, SourceMetadata};
use crate::quarantine::{Reason, Reasons};

/// The extract plugin of a `format = "extract"` source, ready to run.
#[derive(Debug, Clone)]
pub struct Extractor {
    /// The compiled `extractor` component.
    pub plugin: Arc<Plugin>,
    /// What its `config` import returns.
    pub config_json: Arc<str>,
    /// Limits on each call (one call per file).
    pub limits: Limits,
    /// MIME type passed with every file.
    pub content_type: String,
    /// Largest file handed to the plugin, in bytes.
    pub max_file_bytes: u64,
    /// Its capabilities, host paths resolved.
    pub grants: crate::plugin::Grants,
    /// Its outbound HTTP (breakers and counts), when granted.
    pub http: Option<Arc<crate::plugin::HttpAccess>>,
    /// Its keyed state (a cursor, say), when it imports
    /// `weir:plugin/state`: namespace [`EXTRACT_STATE`]. A call's writes
    /// apply at once to what later calls read, and are committed with the
    /// epoch holding the last batch of the file that call read.
    pub state: Option<Arc<crate::state::stage::StageState>>,
}

/// The state namespace of a pipeline's extract plugin (stage and operator
/// names cannot take it: see the config checks).
pub const EXTRACT_STATE: &str = "source.extract";

impl Source {
    /// Each file's bytes through the extract plugin, one instance reused
    /// across files until it fails.
    pub(super) fn extracted(
        &self,
        extractor: Extractor,
        first_file: usize,
        skip: u64,
    ) -> impl Iterator<Item = Result<SourceItem>> + Send + 'static {
        let batch_size = self.batch_size;
        let mut instance: Option<PluginInstance> = None;
        let files: Vec<PathBuf> = self.files.iter().skip(first_file).cloned().collect();
        files.into_iter().enumerate().flat_map(move |(i, path)| {
            let skip = if i == 0 { skip as usize } else { 0 };
            extract_items(&extractor, &mut instance, batch_size, path)
                .into_iter()
                .skip(skip)
        })
    }
}

/// One file's items through the extract plugin: batches of at most
/// `batch_size` rows, or the file as one rejected row.
fn extract_items(
    extractor: &Extractor,
    instance: &mut Option<PluginInstance>,
    batch_size: usize,
    path: PathBuf,
) -> Vec<Result<SourceItem>> {
    let file: Arc<str> = Arc::from(path.display().to_string());
    let bytes = match std::fs::read(&path).with_context(|| format!("reading {}", path.display())) {
        Ok(bytes) => bytes,
        Err(e) => return vec![Err(e)],
    };
    match extract_file(extractor, instance, &file, &bytes) {
        Ok((batches, state)) => {
            let mut items: Vec<SourceBatch> = batches
                .iter()
                .flat_map(|batch| {
                    (0..batch.num_rows().max(1))
                        .step_by(batch_size)
                        .map(|offset| {
                            batch.slice(offset, batch_size.min(batch.num_rows() - offset))
                        })
                        .collect::<Vec<_>>()
                })
                .map(|batch| SourceBatch {
                    batch,
                    file: file.clone(),
                    state: None,
                })
                .collect();
            // The file's state writes go with its last batch. A file that
            // yields no batch commits none (nothing new: the cursor stays).
            if let Some(last) = items.last_mut() {
                last.state = state.filter(|changes| !changes.is_empty());
            }
            items
                .into_iter()
                .map(|b| Ok(SourceItem::Batch(b)))
                .collect()
        }
        Err((kind, message)) => {
            tracing::warn!(file = %file, kind, %message, "extract plugin rejected a file");
            let rows = RecordBatch::try_from_iter([
                (
                    "source_file",
                    Arc::new(arrow::array::StringArray::from(vec![&*file]))
                        as arrow::array::ArrayRef,
                ),
                (
                    "bytes",
                    Arc::new(arrow::array::Int64Array::from(vec![bytes.len() as i64])),
                ),
            ])
            .expect("two one-row columns");
            let reason = Reason {
                stage: Arc::from("source"),
                plugin: Arc::from(extractor.plugin.name()),
                plugin_sha256: Arc::from(extractor.plugin.sha256()),
                error_kind: Arc::from(kind),
                rule: None,
                message: message.into(),
            };
            vec![Ok(SourceItem::Rejected {
                file,
                rows,
                reasons: Reasons::same(reason, 1),
            })]
        }
    }
}

/// One file's batches and the extract plugin's state writes for it.
type Extracted = (Vec<RecordBatch>, Option<crate::state::Changes>);

/// Runs the extract plugin on one file: its batches and, for a stateful
/// plugin, its state writes (already applied to the working state). The
/// instance is created on first use and dropped after a failure. Errors
/// are (kind, message) for the quarantine.
fn extract_file(
    extractor: &Extractor,
    instance: &mut Option<PluginInstance>,
    file: &str,
    bytes: &[u8],
) -> Result<Extracted, (&'static str, String)> {
    if bytes.len() as u64 > extractor.max_file_bytes {
        return Err((
            "file_too_large",
            format!(
                "{} bytes, over max_file_bytes = {}",
                bytes.len(),
                extractor.max_file_bytes
            ),
        ));
    }
    let result = (|| -> Result<Vec<RecordBatch>, crate::plugin::PluginError> {
        if instance.is_none() {
            let mut created = extractor.plugin.instantiate_with(
                "source",
                extractor.config_json.clone(),
                extractor.limits,
                &extractor.grants,
                None,
                extractor.http.as_ref(),
            )?;
            if let Some(state) = &extractor.state {
                created.attach_state(state.clone());
            }
            *instance = Some(created);
        }
        let metadata = SourceMetadata {
            source_name: file.to_string(),
            content_type: extractor.content_type.clone(),
        };
        let (batches, _) = instance
            .as_mut()
            .expect("created above")
            .extract(bytes, &metadata)?;
        batches
            .into_iter()
            .map(|batch| Ok(crate::columnar::from_wit(batch)?))
            .collect()
    })();
    match result {
        Ok(batches) => {
            let state = extractor.state.as_ref().map(|state| {
                let writes = instance
                    .as_mut()
                    .expect("a successful call had an instance")
                    .take_state_writes();
                // Later files read what this one wrote, untracked: the
                // writes reach the store with the file's last batch.
                state
                    .restore(writes.clone())
                    .expect("byte values always decode");
                writes
            });
            Ok((batches, state))
        }
        Err(e) => {
            *instance = None;
            Err((e.kind(), e.to_string()))
        }
    }
}
