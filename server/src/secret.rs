//! Key material that must never reach a log: its `Debug` says only how long it is.

/// A secret (the device key, the admin token). Serialized as its bytes (the supervisor hands the
/// device key to its workers over their private control channel).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes, hidden)", self.0.len())
    }
}

impl std::ops::Deref for Secret {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn debug_hides_the_bytes() {
        let s = super::Secret(b"hunter2-hunter2-hunter2".to_vec());
        let shown = format!("{s:?} {:?}", Some(&s));
        assert!(!shown.contains("hunter2") && shown.contains("23 bytes"), "{shown}");
    }
}
