//! [`Cause`]: the error a storage backend or a hub reported, kept as the typed source of a
//! [`StoreError`](crate::store::StoreError) or [`HubError`](crate::hub::HubError) rather than
//! flattened into a string, so a caller can still reach it
//! ([`std::error::Error::source`], [`Cause::downcast_ref`]).

use std::error::Error as StdError;
use std::sync::Arc;

/// A backend's own error. Cheap to clone (shared), and comparable by its message so that the
/// errors holding it can still be compared in tests.
#[derive(Clone)]
pub struct Cause(Arc<dyn StdError + Send + Sync + 'static>);

impl Cause {
    /// Wraps a backend's error; a plain message (`&str`, `String`) is its own cause.
    pub fn new(e: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        Self(Arc::from(e.into()))
    }

    /// The backend's error as its own type, when it is a `T`.
    pub fn downcast_ref<T: StdError + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref::<T>()
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl StdError for Cause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source()
    }
}

impl From<&str> for Cause {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<String> for Cause {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Cause {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_backend_error_reachable() {
        let io = std::io::Error::other("disk full");
        let c = Cause::new(io);
        assert_eq!(c.to_string(), "disk full");
        assert_eq!(
            c.downcast_ref::<std::io::Error>().unwrap().kind(),
            std::io::ErrorKind::Other
        );
        assert_eq!(c, Cause::new("disk full"));
    }
}
