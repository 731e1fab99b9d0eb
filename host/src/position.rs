//! Where a source stands in its input: what the checkpoint protocol
//! records after each epoch and a source resumes from
//! ([`crate::source::SourceConnector::read_from`]); sinks that commit on
//! their own side record it too ([`crate::sink::EpochSink`]).

/// Where the source stands: the next item comes from file `file` (an index
/// into the source's files) after its first `items` items (batches or
/// rejected-record groups), which held `records` records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Index of the file being read.
    pub file: usize,
    /// Items of that file already consumed.
    pub items: u64,
    /// Records of that file already consumed.
    pub records: u64,
    /// An incremental source's high-water mark: the cursor column's value
    /// in the last item (an integer, or days / microseconds since 1970).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<i64>,
    /// An incremental source's upper bound for this run: the cursor
    /// column's greatest value when the run started, so that a resumed run
    /// reads the same rows as the one that crashed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_limit: Option<i64>,
}
