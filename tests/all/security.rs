//! Findings of the security review (issue 13) that stay fixed: hostile
//! records are quarantined instead of aborting the process, a file that
//! kept killing the service is set aside, and state files are private.

use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;

use crate::serve::{Running, post, read_parts, records, write_pipeline, write_service};
use crate::support::read_jsonl;

/// One JSON Lines record holding `depth` nested arrays.
fn nested_record(id: i64, depth: usize) -> String {
    format!(
        "{{\"id\":{id},\"action\":{}{},\"value\":1}}\n",
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

#[test]
fn a_deeply_nested_json_lines_record_is_quarantined_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let service = write_service(dir.path(), "", "linger_ms = 5");
    let running = Running::start(&service);
    // 40,000 levels overflowed the stack inside arrow-json and aborted the
    // process; it is now refused before the decoder sees it.
    let body = format!(
        "{}{}{}",
        records(0..2, &[]),
        nested_record(99, 40_000),
        records(2..4, &[])
    );
    let client = reqwest::blocking::Client::new();
    let response = client
        .post(format!("{}/v1/pipelines/events/records", running.url()))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let ack: Value = response.json().unwrap();
    assert_eq!(
        (ack["written"].as_u64(), ack["quarantined"].as_u64()),
        (Some(4), Some(1)),
        "{ack}"
    );
    let reason = ack["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["error_kind"] == "parse")
        .unwrap_or_else(|| panic!("{ack}"));
    assert!(
        reason["example"]
            .as_str()
            .unwrap()
            .contains("nested more than 128 levels"),
        "{reason}"
    );
    // The service still answers.
    let health = client
        .get(format!("{}/health", running.url()))
        .send()
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    running.shutdown().unwrap();
}

#[test]
fn numbers_out_of_their_columns_range_are_quarantined_not_coerced() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let service = write_service(dir.path(), "", "linger_ms = 5");
    let running = Running::start(&service);
    let body = concat!(
        "{\"id\":1,\"action\":\"ok\",\"value\":-99999999999999999999}\n",
        "{\"id\":2,\"action\":\"ok\",\"value\":9223372036854775808}\n",
        "{\"id\":3,\"action\":\"ok\",\"value\":1.5}\n",
        "{\"id\":4,\"action\":\"ok\",\"value\":-9223372036854775808}\n",
    );
    let (status, ack) = running.oneshot(post(
        "/v1/pipelines/events/records",
        "application/x-ndjson",
        body,
    ));
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(
        (ack["written"].as_u64(), ack["quarantined"].as_u64()),
        (Some(1), Some(3)),
        "{ack}"
    );
    running.shutdown().unwrap();
    let rows = read_parts(&dir.path().join("out"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["value"], i64::MIN);
    let quarantined = read_parts(&dir.path().join("quarantine"));
    let messages: Vec<&str> = quarantined
        .iter()
        .filter_map(|r| r["message"].as_str())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("out of range for Int64")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("not a whole number")),
        "{messages:?}"
    );
}

#[test]
fn a_float_that_overflows_is_quarantined_by_weir_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("in.jsonl"),
        "{\"x\": 1.5}\n{\"x\": 1e400}\n",
    )
    .unwrap();
    let file = crate::support::write_pipeline(
        dir.path(),
        "[source]\nformat = \"jsonl\"\npath = \"in.jsonl\"\nschema = [{ name = \"x\", type = \"float64\" }]\n",
    );
    let report = crate::support::run(&file);
    assert_eq!((report.records.written, report.records.quarantined), (1, 1));
    let quarantine = read_jsonl(&dir.path().join("quarantine.jsonl"));
    assert!(
        quarantine[0]["message"]
            .as_str()
            .unwrap()
            .contains("1e400 is out of range for Float64"),
        "{quarantine:?}"
    );
}

#[test]
fn a_dropped_file_that_kept_killing_the_service_is_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let drop = dir.path().join("incoming");
    std::fs::create_dir(&drop).unwrap();
    let service = write_service(dir.path(), "", "drop_dir = \"incoming\"\nlinger_ms = 5");
    let poison = records(0..3, &[]);
    std::fs::write(drop.join("poison.jsonl"), &poison).unwrap();
    std::fs::write(drop.join("fine.jsonl"), records(10..12, &[])).unwrap();
    // The attempts log as three processes that died while reading
    // `poison.jsonl` left it: an attempt each, never finished.
    let state = dir.path().join("state/events");
    std::fs::create_dir_all(&state).unwrap();
    let sha256 = weir::plugin::sha256_hex(poison.as_bytes());
    let attempt = format!("{{\"file\":\"poison.jsonl\",\"sha256\":\"{sha256}\"}}\n");
    std::fs::write(state.join("attempts.jsonl"), attempt.repeat(3)).unwrap();

    let running = Running::start(&service);
    let checkpoint = state.join("processed.jsonl");
    crate::serve::wait_for_lines(&checkpoint, 2);
    running.shutdown().unwrap();

    let entries = read_jsonl(&checkpoint);
    let poison_entry = entries
        .iter()
        .find(|e| e["file"] == "poison.jsonl")
        .unwrap();
    let error = poison_entry["error"].as_str().unwrap();
    assert!(
        error.contains("set aside") && error.contains("3 times"),
        "{error}"
    );
    assert!(!drop.join("poison.jsonl").exists());
    assert!(drop.join(".failed/poison.jsonl").exists());
    let written = read_parts(&dir.path().join("out"));
    let ids: Vec<i64> = written.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 2, "only the fine file: {ids:?}");

    // A file processed to the end leaves no unfinished attempt behind.
    let attempts = std::fs::read_to_string(state.join("attempts.jsonl")).unwrap();
    let running = Running::start(&service);
    running.shutdown().unwrap();
    let compacted = std::fs::read_to_string(state.join("attempts.jsonl")).unwrap();
    assert!(attempts.contains("fine.jsonl"), "{attempts}");
    assert!(compacted.is_empty(), "{compacted}");
}

#[cfg(unix)]
#[test]
fn state_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let drop = dir.path().join("incoming");
    std::fs::create_dir(&drop).unwrap();
    let service = write_service(dir.path(), "", "drop_dir = \"incoming\"\nlinger_ms = 5");
    std::fs::write(drop.join("a.jsonl"), records(0..2, &[])).unwrap();
    let running = Running::start(&service);
    crate::serve::wait_for_lines(&dir.path().join("state/events/processed.jsonl"), 1);
    running.shutdown().unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("state")), 0o700);
    assert_eq!(mode(&dir.path().join("state/events")), 0o700);
    assert_eq!(
        mode(&dir.path().join("state/events/processed.jsonl")),
        0o600
    );
    assert_eq!(mode(&dir.path().join("state/events/attempts.jsonl")), 0o600);
}

/// Opens a raw connection to `running`.
pub(crate) fn connect(running: &Running) -> std::net::TcpStream {
    let address = running.url().trim_start_matches("http://");
    let stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection or `timeout`; the text.
pub(crate) fn read_answer(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends `body` in 64 KiB pieces, pausing between them, and stops as soon
/// as the server answers (so the server closes a connection it has read
/// to the end, and the answer is not lost to a reset); returns the answer.
pub(crate) fn send_until_answered(stream: &mut std::net::TcpStream, body: &[u8]) -> String {
    use std::io::Write;
    for piece in body.chunks(64 * 1024) {
        stream
            .set_read_timeout(Some(Duration::from_millis(30)))
            .unwrap();
        let mut probe = [0u8; 1];
        if stream.peek(&mut probe).is_ok_and(|n| n > 0) {
            break;
        }
        if stream.write_all(piece).is_err() {
            break;
        }
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    read_answer(stream)
}

#[test]
fn silent_connections_are_closed_and_the_connection_count_is_capped() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let service = write_service(
        dir.path(),
        "max_connections = 2\nheader_read_timeout_ms = 400",
        "linger_ms = 5",
    );
    let running = Running::start(&service);
    // Two clients that never finish their headers hold both slots...
    let started = Instant::now();
    let mut silent: Vec<_> = (0..2).map(|_| connect(&running)).collect();
    silent[0]
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    // ...so a third waits until the header timeout frees one.
    let mut third = connect(&running);
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let answer = read_answer(&mut third);
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        waited >= Duration::from_millis(350),
        "answered after {waited:?}: not capped"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // The silent ones were closed by the server.
    for stream in &mut silent {
        let rest = read_answer(stream);
        assert!(!rest.contains("200 OK"), "{rest}");
    }
    running.shutdown().unwrap();
}

#[test]
fn a_body_that_stops_arriving_gets_408() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let service = write_service(dir.path(), "body_read_timeout_ms = 300", "linger_ms = 5");
    let running = Running::start(&service);
    let mut stream = connect(&running);
    stream
        .write_all(
            b"POST /v1/pipelines/events/records HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-ndjson\r\nContent-Length: 1000\r\n\r\n{\"id\": 1",
        )
        .unwrap();
    let answer = read_answer(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    running.shutdown().unwrap();
}

#[test]
fn bodies_in_memory_are_capped_for_the_whole_service() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let service = write_service(
        dir.path(),
        "max_body_bytes = 4000000\nmax_buffered_bytes = 1500000",
        "linger_ms = 5",
    );
    let running = Running::start(&service);
    let line = "{\"id\":1,\"action\":\"ok\",\"value\":1}\n";
    let body: String = line.repeat(1_000_000 / line.len());
    let head = format!(
        "POST /v1/pipelines/events/records HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // A sends all but its last byte and waits: its bytes stay held.
    let mut a = connect(&running);
    a.write_all(head.as_bytes()).unwrap();
    a.write_all(&body.as_bytes()[..body.len() - 1]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // B would pass the service's budget: 503, with nothing buffered past it.
    let mut b = connect(&running);
    b.write_all(head.as_bytes()).unwrap();
    let answer = send_until_answered(&mut b, body.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 503"), "{:.300}", answer);
    assert!(answer.contains("max_buffered_bytes"), "{:.300}", answer);
    // A finishes and is taken; then the budget is free again.
    a.write_all(&body.as_bytes()[body.len() - 1..]).unwrap();
    let answer = read_answer(&mut a);
    assert!(answer.starts_with("HTTP/1.1 200"), "{:.300}", answer);
    assert_eq!(running.service.buffers().used_bytes(), 0);
    running.shutdown().unwrap();
}

#[test]
fn gzip_bodies_are_decoded_bombs_refused_and_other_encodings_415() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), "");
    let service = write_service(dir.path(), "max_body_bytes = 100000", "linger_ms = 5");
    let running = Running::start(&service);
    let gzip = |bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    };
    let client = reqwest::blocking::Client::new();
    let post = |body: Vec<u8>, encoding: &str| {
        let response = client
            .post(format!("{}/v1/pipelines/events/records", running.url()))
            .header("content-type", "application/x-ndjson")
            .header("content-encoding", encoding)
            .body(body)
            .send()
            .unwrap();
        let status = response.status();
        (status, response.json::<Value>().unwrap())
    };
    let (status, ack) = post(gzip(records(0..10, &[3]).as_bytes()), "gzip");
    assert_eq!(status, StatusCode::OK, "{ack}");
    assert_eq!(
        (ack["written"].as_u64(), ack["quarantined"].as_u64()),
        (Some(9), Some(1))
    );
    // 50 MB of zeros compress to about 50 KB: under max_body_bytes as sent.
    let bomb = gzip(&vec![b'0'; 50_000_000]);
    assert!(bomb.len() < 100_000);
    let (status, error) = post(bomb, "gzip");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("decodes to more"),
        "{error}"
    );
    let (status, error) = post(records(0..2, &[]).into_bytes(), "br");
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{error}");
    running.shutdown().unwrap();
}

#[test]
fn error_answers_are_capped_and_deploy_refuses_a_builtin_stage() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        "[[stages]]\nname = \"tidy\"\nkind = \"transform\"\nplugin = \"builtin:select\"\n",
    );
    let service = write_service(dir.path(), "", "linger_ms = 5");
    let running = Running::start(&service);
    // A 40 KB header line is not echoed back whole.
    let header = format!("id,action,value,{}\n1,ok,1,x\n", "x".repeat(40_000));
    let (status, error) = running.oneshot(post("/v1/pipelines/events/records", "text/csv", header));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let message = error["error"].as_str().unwrap();
    assert!(message.len() < 2200, "{} bytes", message.len());
    assert!(message.contains("bytes cut"), "{message:.200}");

    let (status, error) = running.oneshot(post(
        "/v1/pipelines/events/stages/tidy/deploy",
        "application/json",
        format!("{{\"sha256\": \"{}\"}}", "0".repeat(64)),
    ));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    assert!(
        error["error"].as_str().unwrap().contains("built-in"),
        "{error}"
    );
    running.shutdown().unwrap();
}

/// Environment variable naming the service file that
/// [`child_service_for_crash_tests`] serves when this test binary is run
/// as a child process.
const CHILD_SERVICE: &str = "WEIR_TEST_CHILD_SERVICE";

/// Not a test on its own: when the crash test below runs this binary as a
/// child with [`CHILD_SERVICE`] set, it serves that file until killed.
#[test]
fn child_service_for_crash_tests() {
    let Some(service) = std::env::var_os(CHILD_SERVICE) else {
        return;
    };
    let _running = Running::start(Path::new(&service));
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Lines in `path` (0 when it does not exist).
fn lines_in(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_dropped_file_that_kills_the_service_three_times_is_set_aside_for_real() {
    let dir = tempfile::tempdir().unwrap();
    let stages = format!(
        "[[stages]]\nname = \"slow\"\nkind = \"transform\"\nplugin = {:?}\n",
        weir_tests::SLEEPY
    );
    write_pipeline(dir.path(), &stages);
    let drop = dir.path().join("incoming");
    std::fs::create_dir(&drop).unwrap();
    let service = write_service(dir.path(), "", "drop_dir = \"incoming\"\nlinger_ms = 5");
    // One row makes the stage sleep 5 s: long enough to kill the process
    // while it handles the file, every time it starts.
    std::fs::write(
        drop.join("slow.jsonl"),
        "{\"id\":1,\"action\":\"sleep\",\"value\":1}\n",
    )
    .unwrap();
    let state = dir.path().join("state/events");
    let attempts = state.join("attempts.jsonl");
    let checkpoint = state.join("processed.jsonl");
    let spawn = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "security::child_service_for_crash_tests",
                "--test-threads=1",
            ])
            .env(CHILD_SERVICE, &service)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let wait_until = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    for kill in 1..=3 {
        let mut child = spawn();
        // The attempt is synced before the file is read; kill -9 then.
        wait_until("the attempt", &|| lines_in(&attempts) >= kill);
        std::thread::sleep(Duration::from_millis(200));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(lines_in(&checkpoint), 0, "kill {kill}: nothing finished");
    }
    // Three unfinished attempts: the next start sets the file aside.
    let mut child = spawn();
    wait_until("the set-aside", &|| lines_in(&checkpoint) >= 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let entry = &read_jsonl(&checkpoint)[0];
    assert!(
        entry["error"].as_str().unwrap().contains("set aside"),
        "{entry}"
    );
    assert!(drop.join(".failed/slow.jsonl").exists());
    assert!(!drop.join("slow.jsonl").exists());
    assert!(
        read_parts(&dir.path().join("out")).is_empty(),
        "nothing was written"
    );
}
