//! What the server's own HTTPS calls share (a storage account, linked hubs, allocation
//! webhooks): reading an answer's body within a bound, so that no peer can make the server
//! hold more than it expects.

/// Why an answer's body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// The body is longer than the bound.
    TooLarge(usize),
    /// The connection failed while the body arrived.
    Broken(reqwest::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(max) => write!(f, "the answer is longer than {max} bytes"),
            BodyError::Broken(e) => write!(f, "the answer broke off: {}", dps_proto::error::error_chain(e)),
        }
    }
}

/// `resp`'s body, at most `max` bytes of it.
pub(crate) async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| BodyError::Broken(e.without_url()))? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
