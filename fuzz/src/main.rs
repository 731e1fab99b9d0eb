//! `weir-fuzz`: a mutation fuzzer for every decoder an attacker reaches,
//! on stable Rust.
//!
//! ```text
//! weir-fuzz [--seconds N] [--seed S] [--save] [TARGET...]
//! ```
//!
//! Targets (all by default): `csv`, `jsonl`, `json` (request bodies and
//! dropped files, decoded by the same readers `weir run` uses), `parquet`
//! (bodies), `pipeline-toml`, `service-toml` (config files) and
//! `plugin-batch` (the host's checks of a batch a plugin returns). Each runs
//! for `--seconds` (default 60) from its seeds: built-in ones plus the files
//! of `fuzz/corpus/TARGET/`.
//!
//! There is no coverage instrumentation on stable, so the feedback is the
//! target's *behaviour*: an input whose outcome (success with how many
//! batches and rejected records, or the error's message with its numbers
//! blanked) was not seen before joins the corpus, and `--save` writes it to
//! `fuzz/corpus/TARGET/` (at most 100 inputs of at most 4 KiB per run). Mutations are the usual ones (bit flips, byte and
//! token insertion, deletion, repetition of a range, which builds deep
//! nesting, splicing) with a dictionary of tokens per target.
//!
//! A panic is a crash: the input goes to `fuzz/crashes/` and the run ends
//! with exit code 1. Inputs run on a thread with a 2 MiB stack, the size of
//! `weir serve`'s blocking threads, so a stack overflow shows as it would
//! in the service: the process aborts. Before each input runs it is
//! written to `fuzz/crashes/TARGET-last-input`, which therefore holds the
//! input that killed an aborted run.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir::config::{ColumnSpec, SourceConfig, SourceFormat};
use weir::source::Source;

mod batch;
mod mutate;

/// Every target's name.
const TARGETS: [&str; 7] = [
    "csv",
    "jsonl",
    "json",
    "parquet",
    "pipeline-toml",
    "service-toml",
    "plugin-batch",
];

/// Largest input `--save` writes to the corpus, in bytes, and how many
/// it writes per target and run: the corpus is committed, so it stays
/// small.
const MAX_SAVED_BYTES: usize = 4096;
const MAX_SAVED_INPUTS: usize = 100;

/// Stack of the thread running inputs: tokio's default for blocking threads.
const STACK_BYTES: usize = 2 * 1024 * 1024;

/// Longest input the mutations may build, in bytes (deep nesting needs
/// tens of kilobytes).
const MAX_INPUT_BYTES: usize = 256 * 1024;

fn main() {
    match run() {
        Ok(0) => {}
        Ok(_) => std::process::exit(1),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::exit(2);
        }
    }
}

struct Options {
    seconds: f64,
    seed: u64,
    save: bool,
    targets: Vec<String>,
}

fn options() -> Result<Options> {
    let mut options = Options {
        seconds: 60.0,
        seed: 0x5eed_u64 ^ std::process::id() as u64,
        save: false,
        targets: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => options.seconds = args.next().context("--seconds N")?.parse()?,
            "--seed" => options.seed = args.next().context("--seed S")?.parse()?,
            "--save" => options.save = true,
            "-h" | "--help" => {
                println!(
                    "weir-fuzz [--seconds N] [--seed S] [--save] [TARGET...]\ntargets: {}",
                    TARGETS.join(", ")
                );
                std::process::exit(0);
            }
            target if TARGETS.contains(&target) => options.targets.push(arg),
            other => bail!(
                "unknown argument `{other}`; targets: {}",
                TARGETS.join(", ")
            ),
        }
    }
    if options.targets.is_empty() {
        options.targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    Ok(options)
}

/// Runs every chosen target; returns the number of crashes.
fn run() -> Result<usize> {
    let options = options()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let crashes_dir = root.join("crashes");
    std::fs::create_dir_all(&crashes_dir)?;
    let fixture = Arc::new(Fixture::new()?);
    // Panics are reported by the fuzzer, not printed per input.
    std::panic::set_hook(Box::new(|_| {}));
    let mut crashes = 0;
    println!(
        "{:<14} {:>10} {:>10} {:>8} {:>8}",
        "target", "execs", "execs/s", "corpus", "crashes"
    );
    for (i, target) in options.targets.iter().enumerate() {
        let corpus_dir = root.join("corpus").join(target);
        let stats = fuzz_target(
            target,
            &fixture,
            &corpus_dir,
            &crashes_dir,
            &options,
            options.seed.wrapping_add(i as u64),
        )?;
        println!(
            "{target:<14} {:>10} {:>10.0} {:>8} {:>8}",
            stats.execs,
            stats.execs as f64 / stats.elapsed.as_secs_f64().max(1e-9),
            stats.corpus,
            stats.crashes
        );
        crashes += stats.crashes;
    }
    Ok(crashes)
}

struct Stats {
    execs: u64,
    corpus: usize,
    crashes: usize,
    elapsed: Duration,
}

/// What the targets share: a source per text format and a directory for
/// config files.
struct Fixture {
    csv: Source,
    jsonl: Source,
    json: Source,
    parquet: Source,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("data.csv"), "id,name\n1,a\n")?;
        std::fs::create_dir(dir.path().join("tenant"))?;
        let source = |format| -> Result<Source> {
            let config = SourceConfig {
                schema: Some(schema()),
                null_values: vec!["NA".into()],
                ..SourceConfig::file(format, Path::new("absent"))
            };
            Source::open(&config, dir.path(), 64, None)
        };
        Ok(Fixture {
            csv: source(SourceFormat::Csv)?,
            jsonl: source(SourceFormat::Jsonl)?,
            json: source(SourceFormat::Json)?,
            parquet: source(SourceFormat::Parquet)?,
            dir,
        })
    }
}

/// The schema every body is decoded into: one column of each type.
fn schema() -> Vec<ColumnSpec> {
    [
        ("id", "int64", false),
        ("name", "utf8", true),
        ("score", "float64", true),
        ("ok", "boolean", true),
        ("day", "date32", true),
        ("at", "timestamp", true),
        ("raw", "binary", true),
    ]
    .into_iter()
    .map(|(name, data_type, nullable)| ColumnSpec {
        name: name.into(),
        data_type: data_type.into(),
        nullable,
        format: None,
    })
    .collect()
}

/// Runs `input` through `target`; the outcome's signature (what kind of
/// result, with numbers blanked) is the fuzzer's feedback.
fn execute(target: &str, fixture: &Fixture, input: &[u8]) -> String {
    let decode = |source: &Source, format| {
        outcome(
            source
                .decode_bytes(
                    Arc::from("fuzz"),
                    format,
                    bytes::Bytes::copy_from_slice(input),
                )
                .map(|body| {
                    let rejected: usize = body
                        .items
                        .iter()
                        .map(|item| match item {
                            weir::source::SourceItem::Rejected { rows, .. } => rows.num_rows(),
                            weir::source::SourceItem::Batch(_) => 0,
                        })
                        .sum();
                    format!(
                        "ok items={} rejected={} unknown={}",
                        body.items.len().min(4),
                        rejected.min(4),
                        body.unknown_fields.min(2)
                    )
                }),
        )
    };
    match target {
        "csv" => decode(&fixture.csv, SourceFormat::Csv),
        "jsonl" => decode(&fixture.jsonl, SourceFormat::Jsonl),
        "json" => decode(&fixture.json, SourceFormat::Json),
        "parquet" => decode(&fixture.parquet, SourceFormat::Parquet),
        "pipeline-toml" => {
            let path = fixture.dir.path().join("pipeline.toml");
            let text = String::from_utf8_lossy(input);
            outcome(
                weir::config::PipelineConfig::from_toml(&text, &path)
                    .and_then(|config| config.validate(&path, fixture.dir.path()))
                    .map(|()| "ok".to_string())
                    .map_err(|e| anyhow::anyhow!("{}", problems(&e))),
            )
        }
        "service-toml" => {
            let path = fixture.dir.path().join("service.toml");
            let written = std::fs::write(&path, input);
            outcome(
                written
                    .map_err(anyhow::Error::from)
                    .and_then(|()| {
                        weir::serve::config::ServiceConfig::from_file(&path)
                            .map_err(|e| anyhow::anyhow!("{}", problems(&e)))
                    })
                    .map(|_| "ok".to_string()),
            )
        }
        "plugin-batch" => outcome(
            weir::columnar::from_wit(batch::from_recipe(input))
                .map(|b| {
                    format!(
                        "ok rows={} columns={}",
                        b.num_rows().min(4),
                        b.num_columns()
                    )
                })
                .map_err(|e| anyhow::anyhow!("{e}")),
        ),
        other => unreachable!("unknown target {other}"),
    }
}

/// The keys of a config file's problems and each message's first words:
/// the behaviour of the config checks, without the file's path.
fn problems(errors: &weir::config::ConfigErrors) -> String {
    errors
        .0
        .iter()
        .map(|e| {
            format!(
                "{}: {}",
                e.key,
                e.message.chars().take(24).collect::<String>()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A result's signature: `ok …`, or the error's first words with digits
/// blanked (so "line 3" and "line 4" are one behaviour).
fn outcome(result: Result<String>) -> String {
    match result {
        Ok(summary) => summary,
        Err(error) => {
            let text: String = format!("{error:#}")
                .chars()
                .take(96)
                .map(|c| if c.is_ascii_digit() { '#' } else { c })
                .collect();
            format!("err {text}")
        }
    }
}

fn fuzz_target(
    target: &str,
    fixture: &Arc<Fixture>,
    corpus_dir: &Path,
    crashes_dir: &Path,
    options: &Options,
    seed: u64,
) -> Result<Stats> {
    let mut corpus: Vec<Vec<u8>> = seeds(target)?;
    if let Ok(entries) = std::fs::read_dir(corpus_dir) {
        let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        files.sort();
        for file in files {
            corpus.push(std::fs::read(&file)?);
        }
    }
    let last_input_path = crashes_dir.join(format!("{target}-last-input"));
    let last_input = std::fs::File::create(&last_input_path)?;
    let (target_owned, fixture) = (target.to_string(), fixture.clone());
    let deadline = Duration::from_secs_f64(options.seconds);
    let save = options.save.then(|| corpus_dir.to_path_buf());
    let crashes_dir = crashes_dir.to_path_buf();
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-{target}"))
        .stack_size(STACK_BYTES)
        .spawn(move || -> Result<Stats> {
            let started = Instant::now();
            let mut rng = mutate::Rng::new(seed);
            let mut seen: HashSet<String> = HashSet::new();
            let mut execs = 0u64;
            let mut crashes = 0usize;
            let mut saved = 0usize;
            let mut queue: Vec<Vec<u8>> = Vec::new();
            // Seeds first, then mutants until the deadline.
            let mut pending: Vec<Vec<u8>> = corpus.clone();
            loop {
                let input = match pending.pop() {
                    Some(input) => input,
                    None if started.elapsed() >= deadline => break,
                    None => {
                        let pool = if queue.is_empty() || rng.below(4) == 0 {
                            &corpus
                        } else {
                            &queue
                        };
                        let base = &pool[rng.below(pool.len())];
                        let other = &corpus[rng.below(corpus.len())];
                        mutate::mutate(base, other, &mut rng, &target_owned, MAX_INPUT_BYTES)
                    }
                };
                last_input.set_len(0)?;
                last_input.write_all_at(&input, 0)?;
                execs += 1;
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    execute(&target_owned, &fixture, &input)
                }));
                match result {
                    Ok(signature) => {
                        if seen.insert(signature) {
                            if let Some(dir) = &save
                                && input.len() <= MAX_SAVED_BYTES
                                && saved < MAX_SAVED_INPUTS
                            {
                                save_input(dir, &input)?;
                                saved += 1;
                            }
                            queue.push(input);
                        }
                    }
                    Err(panic) => {
                        crashes += 1;
                        let message = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        let path = save_input(&crashes_dir, &input)?;
                        eprintln!(
                            "{target_owned}: panic ({message}); input saved to {}",
                            path.display()
                        );
                        if crashes >= 5 {
                            break;
                        }
                    }
                }
            }
            Ok(Stats {
                execs,
                corpus: seen.len(),
                crashes,
                elapsed: started.elapsed(),
            })
        })?;
    let stats = worker
        .join()
        .map_err(|_| anyhow::anyhow!("the fuzz thread of {target} panicked"))??;
    std::fs::remove_file(&last_input_path)?;
    Ok(stats)
}

/// Writes `input` to `dir`, named by its hash; returns the path.
fn save_input(dir: &Path, input: &[u8]) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    input.hash(&mut hasher);
    let path = dir.join(format!("{:016x}", hasher.finish()));
    let mut file = std::fs::File::create(&path)?;
    file.write_all(input)?;
    Ok(path)
}

/// Built-in seeds per target: valid inputs of each shape, so mutation
/// starts from what the decoders accept.
fn seeds(target: &str) -> Result<Vec<Vec<u8>>> {
    let text = |items: &[&str]| items.iter().map(|s| s.as_bytes().to_vec()).collect();
    Ok(match target {
        "csv" => text(&[
            "id,name,score,ok,day,at,raw\n1,a,1.5,true,2024-01-02,2024-01-02T03:04:05,x\n2,NA,,false,,,\n",
            "name,id\n\"quoted, comma\",3\n\"multi\nline\",4\n",
            "id,name,score,ok,day,at,raw\n-9223372036854775808,\"\"\"\",1e308,TRUE,1970-01-01,1970-01-01 00:00:00,\n",
        ]),
        "jsonl" => text(&[
            "{\"id\": 1, \"name\": \"a\", \"score\": 1.5, \"ok\": true, \"day\": \"2024-01-02\", \"at\": \"2024-01-02T03:04:05\", \"raw\": \"x\"}\n{\"id\": 2, \"name\": null}\n",
            "{\"id\": -9223372036854775808, \"score\": 1e308, \"extra\": [1, {\"a\": [[]]}]}\n\n{\"id\": 3, \"name\": \"\\u00e9\\n\"}\n",
        ]),
        "json" => text(&[
            "[{\"id\": 1, \"name\": \"a\", \"score\": 1.5}, {\"id\": 2, \"ok\": false, \"day\": \"2024-01-02\"}]",
            "{\"id\": 7, \"name\": \"one object\"}",
            "[\n  {\"id\": 1,\n   \"name\": \"pretty\"}\n]",
        ]),
        "parquet" => vec![parquet_seed()?],
        "pipeline-toml" => text(&[
            "[pipeline]\nname = \"p\"\nbatch_size = 10\nmax_quarantine_fraction = 0.5\n\n[source]\nformat = \"csv\"\npath = \"data.csv\"\nnull_values = [\"NA\"]\nschema = [{ name = \"id\", type = \"int64\" }]\n\n[[stages]]\nname = \"v\"\nkind = \"validate\"\nplugin = \"builtin:check\"\nconfig = { rules = [{ id = \"r\", column = \"id\", check = \"range\", ge = 0 }] }\n\n[sink]\nformat = \"parquet\"\npath = \"out\"\npartition_by = [\"id\"]\n\n[quarantine]\nformat = \"jsonl\"\npath = \"q.jsonl\"\n",
        ]),
        "service-toml" => text(&[
            "[service]\nlisten = \"127.0.0.1:0\"\nstate_dir = \"state\"\nmax_body_bytes = 1024\nmax_buffered_bytes = 4096\n\n[[tenants]]\nname = \"t\"\ndir = \"tenant\"\ntokens = [{ id = \"a\", sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\" }]\nquotas = { weight = 2, max_body_bytes = 100 }\n",
        ]),
        "plugin-batch" => batch::seeds(),
        other => bail!("unknown target {other}"),
    })
}

/// A small Parquet file of the fuzz schema.
fn parquet_seed() -> Result<Vec<u8>> {
    use arrow::array::{
        ArrayRef, BinaryArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
        TimestampMicrosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("day", DataType::Date32, true),
        Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        Field::new("raw", DataType::Binary, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2])),
        Arc::new(StringArray::from(vec![Some("a"), None])),
        Arc::new(Float64Array::from(vec![Some(1.5), None])),
        Arc::new(BooleanArray::from(vec![Some(true), None])),
        Arc::new(Date32Array::from(vec![Some(19000), None])),
        Arc::new(TimestampMicrosecondArray::from(vec![Some(1), None])),
        Arc::new(BinaryArray::from(vec![Some(b"x".as_ref()), None])),
    ];
    let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), columns)?;
    let mut bytes = Vec::new();
    let mut writer = parquet::arrow::ArrowWriter::try_new(&mut bytes, schema, None)?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed and every committed corpus input still runs without a
    /// panic (the corpus is the regression suite of past fuzzing).
    #[test]
    fn the_corpus_runs_without_a_panic() {
        let fixture = Fixture::new().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for target in TARGETS {
            let mut inputs = seeds(target).unwrap();
            if let Ok(entries) = std::fs::read_dir(root.join("corpus").join(target)) {
                for entry in entries {
                    inputs.push(std::fs::read(entry.unwrap().path()).unwrap());
                }
            }
            for input in &inputs {
                execute(target, &fixture, input);
            }
        }
    }

    #[test]
    fn mutants_stay_within_the_size_limit() {
        let mut rng = mutate::Rng::new(7);
        let mut input = b"[{\"id\": 1}]".to_vec();
        for _ in 0..10_000 {
            input = mutate::mutate(&input, b"[[[[", &mut rng, "json", 4096);
            assert!(input.len() <= 4096);
        }
    }
}
