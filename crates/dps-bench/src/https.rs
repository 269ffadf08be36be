//! The lean HTTPS client: DPS registration as HTTP/1.1 requests written onto one TLS connection
//! per device — the requests the SDK sends through reqwest (same headers, same keep-alive
//! connection for the poll), without building an HTTP client per device.

use dps_client::CLIENT_VERSION;
use dps_proto::rest::Route;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::devices::{interpret, Assignment, Device, Registering};

/// Largest answer accepted.
const MAX_ANSWER: usize = 256 * 1024;
/// Most headers parsed in an answer.
const MAX_HEADERS: usize = 32;

/// Registers `dev` with DPS over HTTPS: PUT register, then GET the operation at once (and,
/// while still assigning, as often as Azure's poll limit allows) until assigned, on the same
/// connection.
pub async fn register(dev: &Device<'_>) -> Result<Assignment, String> {
    let ctx = dev.ctx;
    let mut tls = super::wire::tls(&ctx.dps_https, dev.source(), dev.tls_config()?).await?;
    let auth = dev.sas(
        &format!("{}/registrations/{}", ctx.id_scope, dev.id),
        Some("registration"),
    );
    // The device API version the SDK names: the one that takes a `csr` when the run asks for
    // certificates.
    let target = |route: Route| format!("{}?api-version={}", route.path(), dev.api_version());
    let body = dev.registration_body();
    let mut buf = Vec::with_capacity(2048);
    let mut state = Registering::default();
    loop {
        let request = match &state.operation {
            None => head(
                "PUT",
                &target(Route::Register {
                    scope: ctx.id_scope.clone(),
                    registration_id: dev.id.clone(),
                }),
                &ctx.https_authority,
                auth.as_deref(),
                Some(&body),
            ),
            Some(op) => head(
                "GET",
                &target(Route::OperationStatus {
                    scope: ctx.id_scope.clone(),
                    registration_id: dev.id.clone(),
                    operation_id: op.clone(),
                }),
                &ctx.https_authority,
                auth.as_deref(),
                None,
            ),
        };
        tls.write_all(&request)
            .await
            .map_err(|e| format!("https write: {}", e.kind()))?;
        let (status, retry_after, answer) = read_answer(&mut tls, &mut buf).await?;
        if let Some(done) = state.follow(interpret(status, retry_after, &answer)).await {
            return done;
        }
    }
}

/// One request: the headers reqwest sends for the SDK, and the body.
fn head(method: &str, target: &str, authority: &str, auth: Option<&str>, body: Option<&[u8]>) -> Vec<u8> {
    let mut r = format!(
        "{method} {target} HTTP/1.1\r\ncontent-type: application/json; charset=utf-8\r\naccept: application/json\r\nuser-agent: {CLIENT_VERSION}\r\nhost: {authority}\r\n"
    );
    if let Some(a) = auth {
        r.push_str("authorization: ");
        r.push_str(a);
        r.push_str("\r\n");
    }
    if let Some(b) = body {
        r.push_str(&format!("content-length: {}\r\n", b.len()));
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body.unwrap_or_default());
    bytes
}

/// Reads one answer: `(status, retry-after, body)`. Bodies must have a `content-length`
/// (the server's JSON answers do); anything left in `buf` belongs to the next answer.
async fn read_answer<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<(u16, Option<u32>, Vec<u8>), String> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = resp.parse(buf).map_err(|_| "https: bad answer")? {
            let status = resp.code.unwrap_or(0);
            let header = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::trim)
            };
            if header("transfer-encoding").is_some() {
                return Err("https: chunked answers are not supported".into());
            }
            let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            let retry_after = header("retry-after").and_then(|v| v.parse().ok());
            if len + length > MAX_ANSWER {
                return Err("https: answer too large".into());
            }
            while buf.len() < len + length {
                fill(stream, buf).await?;
            }
            let body = buf[len..len + length].to_vec();
            buf.drain(..len + length);
            return Ok((status, retry_after, body));
        }
        if buf.len() > MAX_ANSWER {
            return Err("https: answer too large".into());
        }
        fill(stream, buf).await?;
    }
}

/// Appends what the stream has to `buf`; the stream ending is an error.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) => Err("https: closed awaiting the answer".into()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) => Err(format!("https read: {}", e.kind())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_split_by_content_length() {
        let two = b"HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\nretry-after: 3\r\n\r\n{}HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnull";
        let mut stream: &[u8] = two;
        let mut buf = Vec::new();
        assert_eq!(
            read_answer(&mut stream, &mut buf).await.unwrap(),
            (202, Some(3), b"{}".to_vec())
        );
        assert_eq!(
            read_answer(&mut stream, &mut buf).await.unwrap(),
            (200, None, b"null".to_vec())
        );
        assert!(read_answer(&mut stream, &mut buf).await.is_err(), "closed");
        let r = head("PUT", "/x", "h:443", Some("SharedAccessSignature sr=a"), Some(b"{}"));
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("PUT /x HTTP/1.1\r\n"));
        assert!(text.contains("content-length: 2\r\n") && text.ends_with("\r\n\r\n{}"));
    }
}
