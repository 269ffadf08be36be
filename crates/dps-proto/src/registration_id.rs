//! Registration-id rules (service-api.md §3.11, device-protocol.md §1.1).

/// Why a registration id (or enrollment-group id) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Empty string.
    #[error("id is empty")]
    Empty,
    /// Longer than 128 characters.
    #[error("id '{0}' is longer than 128 characters")]
    TooLong(String),
    /// Contains a character outside `[A-Za-z0-9-._:]`.
    #[error("id '{id}' contains '{ch}'; only letters, digits and '-', '.', '_', ':' are allowed")]
    BadChar {
        /// Offending id.
        id: String,
        /// First offending character.
        ch: char,
    },
    /// Starts or ends with a special character.
    #[error("id '{0}' must start and end with a letter or digit")]
    BadEdge(String),
}

/// Validates a registration id or enrollment-group id: 1–128 characters of `[A-Za-z0-9-._:]`,
/// beginning and ending with a letter or digit. (Azure's docs also allow a trailing '-'; we accept
/// it there for compatibility.)
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.chars().count() > 128 {
        return Err(IdError::TooLong(id.chars().take(32).collect::<String>() + "..."));
    }
    if let Some(ch) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':')))
    {
        return Err(IdError::BadChar { id: id.to_string(), ch });
    }
    let first = id.chars().next().unwrap_or('a');
    let last = id.chars().last().unwrap_or('a');
    if !first.is_ascii_alphanumeric() || !(last.is_ascii_alphanumeric() || last == '-') {
        return Err(IdError::BadEdge(id.to_string()));
    }
    Ok(())
}

/// The key used to store and compare ids: Azure treats them case-insensitively.
pub fn key(id: &str) -> String {
    id.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        for ok in ["dev-01", "sym_enrollment_abf63bb6", "a", "A:b.c", "x-"] {
            validate(ok).unwrap();
        }
        assert_eq!(validate(""), Err(IdError::Empty));
        assert!(matches!(validate(&"a".repeat(129)), Err(IdError::TooLong(_))));
        assert!(matches!(validate("dev 1"), Err(IdError::BadChar { ch: ' ', .. })));
        assert!(matches!(validate("dev/1"), Err(IdError::BadChar { ch: '/', .. })));
        assert!(matches!(validate("-dev"), Err(IdError::BadEdge(_))));
        assert!(matches!(validate("dev."), Err(IdError::BadEdge(_))));
        assert_eq!(key("Dev-01"), "dev-01");
    }
}
