//! On `action = "connect"`: opens a TCP connection to 127.0.0.1:9 and
//! reports how that went as an `internal` error (weir grants no network,
//! so it must be refused).
use weir_sdk::{Error, Output, RecordBatch, Transform};

struct Sockets;

impl Transform for Sockets {
    fn transform(batch: RecordBatch) -> Result<Output, Error> {
        if weir_test_components::triggered(&batch, "connect").is_some() {
            return Err(Error::Internal(
                match std::net::TcpStream::connect("127.0.0.1:9") {
                    Ok(_) => "connected".to_string(),
                    Err(e) => format!("connect failed: {e}"),
                },
            ));
        }
        Ok(batch.into())
    }
}

weir_sdk::export_transform!(Sockets);
