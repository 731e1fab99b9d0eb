//! Plugins shipped inside the `weir` binary, referenced as `builtin:NAME`.
//!
//! | name | kind | what it does |
//! |---|---|---|
//! | `check` | validate | declarative rules: not-null, not-null-when, range, allowed values, regex, length |
//! | `mask` | transform | salted SHA-256 (hex) or redaction of chosen columns |
//! | `derive` | transform | new columns: numeric buckets with null handling, lookups through reference tables |
//! | `select` | transform | keep, drop and rename columns |
//!
//! Each is built from `plugins/<name>/` by `build.rs`; its module docs there
//! are its reference.

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The component bytes of built-in plugin `name`.
pub fn get(name: &str) -> Option<&'static [u8]> {
    PLUGINS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// Names of all built-in plugins.
pub fn names() -> impl Iterator<Item = &'static str> {
    PLUGINS.iter().map(|(name, _)| *name)
}
