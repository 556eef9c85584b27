//! Errors of the sharing-map crate.

pub use crate::name::NameError;

/// Any error of this crate.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A name broke the naming rules.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A key, value, change set or map broke a size limit.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// A change set could not be applied.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// A method could not be run.
    #[error(transparent)]
    Method(#[from] MethodError),
    /// Stored or received bytes could not be decoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// A size limit was broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Keys must not be empty.
    #[error("keys must not be empty")]
    EmptyKey,
    /// A key is too long.
    #[error("key {key:?} is {len} bytes; the limit is {max}")]
    KeyTooLarge {
        /// The start of the key.
        key: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value or method is too large.
    #[error("the value of key {key:?} is {len} bytes; the limit is {max}")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A change set is too large.
    #[error("the change set for map {map} is {len} bytes; the limit is {max}")]
    ChangeSetTooLarge {
        /// The map.
        map: String,
        /// The change set's size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A map would hold too many entries.
    #[error("map {map} would hold {count} entries; the limit is {max}")]
    TooManyEntries {
        /// The map.
        map: String,
        /// Entries it would hold.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An update id is empty, too long or not printable ASCII.
    #[error("update id {id:?} is invalid: it must be 1 to {max} printable ASCII characters")]
    BadUpdateId {
        /// The id given.
        id: String,
        /// The limit.
        max: usize,
    },
}

/// A change set could not be applied to a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The change set is for another map.
    #[error("change set for map {got} cannot be applied to map {map}")]
    WrongMap {
        /// The map it was applied to.
        map: String,
        /// The map it names.
        got: String,
    },
    /// The change set was made against an older version (compare-and-swap failed).
    #[error(
        "version conflict on map {map}: the change set is for version {expected}, the map is at version {current}"
    )]
    Conflict {
        /// The map.
        map: String,
        /// The map's current version.
        current: u64,
        /// The version the change set was made against.
        expected: u64,
    },
    /// The change set is for a version newer than the map has: versions are missing in between.
    #[error(
        "gap on map {map}: the change set is for version {got}, the map is at version {current}"
    )]
    Gap {
        /// The map.
        map: String,
        /// The map's current version.
        current: u64,
        /// The version the change set applies to.
        got: u64,
    },
    /// A limit was broken.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// A method could not be run. The four kinds of DESIGN.md §3 are distinct variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MethodError {
    /// No method under that key.
    #[error("unknown method {key:?} in map {map}: {reason}")]
    Unknown {
        /// The map.
        map: String,
        /// The key called.
        key: String,
        /// Why it is not a method.
        reason: &'static str,
    },
    /// The replica was opened with `no_exec`.
    #[error("method execution is disabled on this replica of map {map} (no_exec)")]
    ExecDisabled {
        /// The map.
        map: String,
    },
    /// The script failed to compile or raised an error.
    #[error("script error: {message}{}", position(*line, *column))]
    Script {
        /// The script's message.
        message: String,
        /// Line in the method body, from 1.
        line: Option<usize>,
        /// Column, from 1.
        column: Option<usize>,
    },
    /// The script hit a sandbox limit.
    #[error("method exceeded a limit: {what}")]
    LimitExceeded {
        /// Which limit.
        what: String,
    },
    /// Called with the wrong number of arguments.
    #[error("method {key:?} takes {expected} arguments, got {got}")]
    Arity {
        /// The method's key.
        key: String,
        /// Arguments it takes.
        expected: usize,
        /// Arguments given.
        got: usize,
    },
}

fn position(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
        (Some(l), None) => format!(" (line {l})"),
        _ => String::new(),
    }
}

/// Bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Written by a format this build does not know.
    #[error("unknown encoding format {0}; this build reads format {current}", current = crate::codec::FORMAT_VERSION)]
    UnknownFormat(u8),
    /// Not a valid encoding.
    #[error("malformed encoding: {0}")]
    Malformed(String),
}
