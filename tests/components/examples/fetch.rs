//! An extractor that fetches over HTTP (`wasi:http/outgoing-handler`): each
//! line of the source file is an `http://host[:port]/path` URL; each answer
//! must be a CSV document with a header line and no quoted fields, which
//! becomes one batch (a column is int64 when every value parses as one,
//! else float64, else utf8; an empty or `NA` cell is null,
//! as in nycflights13). A transport error or a
//! non-2xx status is an `internal` error naming the URL.
use std::io::Read;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
use weir_sdk::{Column, DataType, Error, Extract, Field, RecordBatch, SourceMetadata};

struct Fetch;

impl Extract for Fetch {
    fn extract(data: Vec<u8>, metadata: SourceMetadata) -> Result<Vec<RecordBatch>, Error> {
        let text = String::from_utf8(data)
            .map_err(|e| Error::Parse(format!("{}: {e}", metadata.source_name)))?;
        text.lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|url| {
                let body = get(url).map_err(|e| Error::Internal(format!("GET {url}: {e}")))?;
                csv_batch(&body).map_err(|e| Error::Parse(format!("{url}: {e}")))
            })
            .collect()
    }
}

fn get(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|()| "bad authority")?;
    request
        .set_path_with_query(Some(if path.is_empty() { "/" } else { path }))
        .map_err(|()| "bad path")?;
    let future = outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let response = future
        .get()
        .ok_or("no response after block")?
        .map_err(|()| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status();
    let body = response.consume().map_err(|()| "body taken twice")?;
    let mut text = String::new();
    {
        let mut stream = body.stream().map_err(|()| "body stream taken twice")?;
        stream
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the body: {e}"))?;
    }
    drop(body);
    if !(200..300).contains(&status) {
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    Ok(text)
}

fn csv_batch(text: &str) -> Result<RecordBatch, String> {
    let mut lines = text.lines().filter(|l| !l.is_empty());
    let header: Vec<&str> = lines.next().ok_or("no header line")?.split(',').collect();
    let mut cells: Vec<Vec<&str>> = vec![Vec::new(); header.len()];
    for (n, line) in lines.enumerate() {
        let row: Vec<&str> = line.split(',').collect();
        if row.len() != header.len() {
            return Err(format!(
                "row {}: {} cells, header has {}",
                n + 1,
                row.len(),
                header.len()
            ));
        }
        for (column, cell) in cells.iter_mut().zip(row) {
            column.push(cell);
        }
    }
    let rows = cells.first().map_or(0, Vec::len) as u32;
    let (fields, columns) = header
        .iter()
        .zip(&cells)
        .map(|(name, values)| typed_column(name, values))
        .unzip();
    RecordBatch::try_new(fields, columns, rows).map_err(|e| format!("{e:?}"))
}

fn cell<'a>(value: &&'a str) -> Option<&'a str> {
    (!value.is_empty() && *value != "NA").then_some(*value)
}

fn typed_column(name: &str, values: &[&str]) -> (Field, Column) {
    let present = || values.iter().filter_map(cell);
    let (data_type, column) = if present().all(|v| v.parse::<i64>().is_ok()) {
        let parsed = values.iter().map(|v| cell(v).and_then(|v| v.parse().ok()));
        (DataType::Int64, Column::from_int64(parsed))
    } else if present().all(|v| v.parse::<f64>().is_ok()) {
        let parsed = values.iter().map(|v| cell(v).and_then(|v| v.parse().ok()));
        (DataType::Float64, Column::from_float64(parsed))
    } else {
        (DataType::Utf8, Column::from_utf8(values.iter().map(cell)))
    };
    let field = Field {
        name: name.to_string(),
        data_type,
        nullable: true,
    };
    (field, column)
}

weir_sdk::export_extract!(Fetch);
