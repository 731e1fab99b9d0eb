//! Helpers shared by the integration tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weir::pipeline::{Pipeline, RunOptions};
use weir::report::RunReport;

/// A CSV of `id,action` rows, one per entry of `actions`.
pub fn action_csv(dir: &Path, actions: &[&str]) -> PathBuf {
    let path = dir.join("input.csv");
    let mut text = String::from("id,action\n");
    for (i, action) in actions.iter().enumerate() {
        text.push_str(&format!("{i},{action}\n"));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes `dir/pipeline.toml`: `head` (the `[pipeline]`, `[source]` and
/// `[[stages]]` tables) followed by a JSON Lines sink `out.jsonl` and a JSON
/// Lines quarantine `quarantine.jsonl`.
pub fn write_pipeline(dir: &Path, head: &str) -> PathBuf {
    let text = format!(
        "{head}\n[sink]\nformat = \"jsonl\"\npath = \"out.jsonl\"\n\n[quarantine]\nformat = \"jsonl\"\npath = \"quarantine.jsonl\"\n"
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A one-stage pipeline over `input.csv` in `dir` with JSON Lines output,
/// `batch_size` rows per batch and one worker (so batch order is the
/// order of calls). `stage_extra` is appended to the `[[stages]]` table.
pub fn one_stage_pipeline(
    dir: &Path,
    kind: &str,
    plugin: &str,
    batch_size: usize,
    stage_extra: &str,
) -> PathBuf {
    write_pipeline(
        dir,
        &format!(
            r#"
[pipeline]
batch_size = {batch_size}
workers = 1

[source]
format = "csv"
path = "input.csv"

[[stages]]
name = "probe"
kind = "{kind}"
plugin = {plugin:?}
{stage_extra}
"#
        ),
    )
}

/// A one-worker pipeline in `dir` whose `format = "extract"` source reads
/// the files matching `pattern` through `plugin`; `extract_extra` is
/// appended to the `[source.extract]` table.
pub fn extract_pipeline(dir: &Path, pattern: &str, plugin: &str, extract_extra: &str) -> PathBuf {
    write_pipeline(
        dir,
        &format!(
            r#"
[pipeline]
workers = 1

[source]
format = "extract"
path = {pattern:?}

[source.extract]
plugin = {plugin:?}
{extract_extra}
"#
        ),
    )
}

/// Loads and runs a pipeline file.
pub fn run(pipeline: &Path) -> RunReport {
    let pipeline = Pipeline::load(pipeline).unwrap_or_else(|e| panic!("{e}"));
    pipeline.run(&RunOptions::default()).unwrap()
}

/// The JSON objects of a JSON Lines file.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every row of a (partitioned) Parquet output as sorted JSON text, the
/// partition column included.
pub fn output_rows(dir: &Path) -> Vec<String> {
    let batches = weir::source::read_output(dir, usize::MAX).unwrap();
    let mut rows = Vec::new();
    for batch in batches {
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        let objects: Vec<serde_json::Map<String, serde_json::Value>> =
            serde_json::from_slice(&writer.into_inner()).unwrap();
        rows.extend(
            objects
                .into_iter()
                .map(|o| serde_json::Value::Object(o).to_string()),
        );
    }
    rows.sort();
    rows
}

/// The (path, JSON body) of each request an [`http_endpoint`] answered.
pub type Received = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A loopback HTTP server: `answer` says whether it answers or holds
/// every request open without a word; it answers the first `refuse`
/// requests 503, the others 200. Returns its URL and the bodies of the
/// requests it answered 200, with their paths.
pub fn http_endpoint(answer: bool, refuse: usize) -> (String, Received) {
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let sink = sink.clone();
            let refused = refused.clone();
            std::thread::spawn(move || {
                if !answer {
                    std::thread::sleep(Duration::from_secs(60));
                    return;
                }
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let mut stream = reader.into_inner();
                if refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < refuse {
                    stream
                        .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .unwrap();
                    return;
                }
                sink.lock()
                    .unwrap()
                    .push((path, serde_json::from_slice(&body).unwrap()));
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .unwrap();
            });
        }
    });
    (url, received)
}
