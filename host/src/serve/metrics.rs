//! The Prometheus exporter behind `GET /metrics`.
//!
//! weir records through the [`metrics`] facade everywhere (plugin calls in
//! [`crate::stages`], batches in [`super::live`]); this module installs the
//! process-wide Prometheus recorder once and renders it. Plugin reload
//! counters live in each [`crate::plugin::PluginSlot`] and are copied into
//! the registry at every scrape.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `weir_records_in_total` / `_out_total` / `_quarantined_total` / `_filtered_total` | counter | pipeline |
//! | `weir_stage_records_{in,out,quarantined,filtered}_total` | counter | pipeline, stage, plugin |
//! | `weir_plugin_call_duration_seconds` | histogram | pipeline, stage, plugin |
//! | `weir_plugin_fuel_consumed_total` | counter (fuel units) | pipeline, stage, plugin |
//! | `weir_plugin_peak_memory_bytes` | gauge (bytes) | pipeline, stage, plugin |
//! | `weir_plugin_bytes_sent_total` | counter (bytes of column buffers lowered into the plugin: only the columns it reads) | pipeline, stage, plugin |
//! | `weir_plugin_bytes_returned_total` | counter (bytes lifted out: a whole batch, or a splice's selection and new columns) | pipeline, stage, plugin |
//! | `weir_plugin_errors_total` | counter | pipeline, stage, kind |
//! | `weir_plugin_reloads_total` | counter | pipeline, stage, outcome = `ok` / `rejected` |
//! | `weir_batches_total` / `weir_batches_failed_total` | counter | pipeline |
//! | `weir_batch_latency_seconds` | histogram (first record in → commit) | pipeline |
//! | `weir_transform_recalls_total` | counter | pipeline, stage |

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets for durations, in seconds: 50 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process-wide Prometheus recorder, installed on first use; `None`
/// when another metrics recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "cannot install the Prometheus recorder; /metrics is disabled");
                    None
                }
            }
        })
        .as_ref()
}
