//! The compact, versioned binary encoding used for storage and transport.
//!
//! Every encoded value starts with one format byte, so stored data can be read by later builds
//! that change the layout; the rest is postcard. JSON values inside entries travel as JSON text.

use serde::{Serialize, de::DeserializeOwned};

use crate::CodecError;

/// The format byte written by this build.
pub const FORMAT_VERSION: u8 = 1;

/// Encodes a value with the format byte in front.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let out = vec![FORMAT_VERSION];
    // Serializing our own types into memory cannot fail: they hold no maps with non-string keys
    // and no sequences of unknown length.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(_) => vec![FORMAT_VERSION],
    }
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Malformed("empty input".into())),
        Some((&FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).map_err(|e| CodecError::Malformed(e.to_string()))
        }
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChangeSet, Entry, MapName, SharingMap, UpdateId};
    use serde_json::json;
    use std::sync::Arc;

    #[test]
    fn change_sets_and_maps_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let name = MapName::parse("bob-tv-x")?;
        let cs = ChangeSet::from_ops(
            name.clone(),
            3,
            UpdateId::parse("u-1")?,
            [
                (
                    Arc::from("a"),
                    Some(Entry::value(json!({"x": [1, 2.5, null]}))),
                ),
                (Arc::from("m"), Some(Entry::method(vec!["q".into()], "q"))),
                (Arc::from("z"), None),
            ],
        );
        assert_eq!(decode::<ChangeSet>(&encode(&cs))?, cs);
        let map = SharingMap::with_entries(name, cs.puts().iter().cloned());
        assert_eq!(decode::<SharingMap>(&encode(&map))?, map);
        Ok(())
    }

    #[test]
    fn unknown_formats_and_garbage_are_errors() {
        assert!(matches!(
            decode::<ChangeSet>(&[9, 1, 2]),
            Err(CodecError::UnknownFormat(9))
        ));
        assert!(matches!(
            decode::<ChangeSet>(&[FORMAT_VERSION, 200, 1]),
            Err(CodecError::Malformed(_))
        ));
        assert!(decode::<ChangeSet>(&[]).is_err());
    }
}
