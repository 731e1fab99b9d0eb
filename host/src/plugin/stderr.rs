//! A plugin's stderr: only its last bytes are kept, however much it writes.
//!
//! A panic message comes last, after whatever the plugin printed before;
//! a pipe that kept the *first* bytes and refused the rest would lose it to
//! a plugin that floods stderr first. [`TailPipe`] accepts every write,
//! keeps the last `capacity` bytes and counts the rest.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

#[derive(Debug, Default)]
struct Tail {
    kept: std::collections::VecDeque<u8>,
    /// Bytes written and then dropped from the front.
    dropped: u64,
}

/// An in-memory stderr keeping its last `capacity` bytes. Clones share the
/// buffer.
#[derive(Debug, Clone)]
pub struct TailPipe {
    capacity: usize,
    tail: Arc<Mutex<Tail>>,
}

impl TailPipe {
    /// A pipe keeping the last `capacity` bytes written to it.
    pub fn new(capacity: usize) -> TailPipe {
        TailPipe {
            capacity,
            tail: Arc::new(Mutex::new(Tail::default())),
        }
    }

    /// The kept bytes (lossy UTF-8) and how many earlier bytes were dropped.
    pub fn contents(&self) -> (String, u64) {
        let tail = self.tail.lock().expect("stderr lock");
        let bytes: Vec<u8> = tail.kept.iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        // A plugin may print a secret it was given; the tail may start
        // inside one.
        let text = match tail.dropped {
            0 => crate::secrets::redact(&text).into_owned(),
            _ => crate::secrets::redact_tail(&text).into_owned(),
        };
        (text, tail.dropped)
    }

    fn push(&self, bytes: &[u8]) {
        let mut tail = self.tail.lock().expect("stderr lock");
        let skip = bytes.len().saturating_sub(self.capacity);
        tail.dropped += skip as u64;
        tail.kept.extend(&bytes[skip..]);
        let over = tail.kept.len().saturating_sub(self.capacity);
        if over > 0 {
            tail.kept.drain(..over);
            tail.dropped += over as u64;
        }
    }
}

impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for TailPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_last_bytes_are_kept_and_the_rest_counted() {
        let pipe = TailPipe::new(8);
        pipe.push(b"0123456789");
        pipe.push(b"ab");
        assert_eq!(pipe.contents(), ("456789ab".to_string(), 4));
    }
}
