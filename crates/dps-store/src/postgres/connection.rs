//! How a node connects to PostgreSQL (decision 0032): the client settings of the store URL, TLS
//! as libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` say, and the deadlines every
//! connection carries.
//!
//! The URL is read as libpq reads it, because that is what operators write: either
//! `postgres://user:pass@host:port/db?key=value&…` or `key=value …` pairs. tokio-postgres knows
//! most keys but not `sslrootcert`, `sslcert`, `sslkey` nor the verifying modes `verify-ca` and
//! `verify-full`, so those are taken out here and become the rustls configuration; the rest is
//! tokio-postgres's. Unlike libpq, no client certificate is looked for in `~/.postgresql/`: a
//! node presents one only when its URL names it.
//!
//! Deadlines, because a request must never wait on a connection that went silent:
//! - connecting: [`CONNECTION_WAIT`];
//! - a connection whose server stopped answering (a partition, a dead machine): TCP keepalives
//!   probe an idle connection after 10 s and give up after three unanswered probes 5 s apart,
//!   and data unacknowledged for 20 s closes it (`tcp_user_timeout`);
//! - a statement stuck behind a lock or an overloaded server: PostgreSQL cancels it after 30 s
//!   (`statement_timeout`), and ends a session idle inside a transaction for 30 s
//!   (`idle_in_transaction_session_timeout`), so a node that vanished mid-transaction does not
//!   hold its row locks until the server's own keepalive notices, hours later.
//!
//! Each is a default: a URL that names the setting (`keepalives_idle=…`, or
//! `options=-c statement_timeout=…`, which comes after these and so wins) keeps its own.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use dps_pki::tls::ServerCheck;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::PgOpenError;

/// How long a request waits for a connection, or for one to be opened, before it fails (and
/// the device is told to retry) rather than hanging while PostgreSQL is away.
pub(crate) const CONNECTION_WAIT: Duration = Duration::from_secs(5);

/// Server settings every session starts with (see the module documentation).
const SESSION_DEFAULTS: &str = "-c statement_timeout=30s -c idle_in_transaction_session_timeout=30s";

/// What every connection of a node is made with: the client settings and the TLS connector.
#[derive(Clone)]
pub(crate) struct Settings {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configuration holds the password.
        f.debug_struct("Settings").finish_non_exhaustive()
    }
}

/// The connection a [`Settings`] opens, driven by whoever holds it.
pub(crate) type Connection = tokio_postgres::Connection<
    tokio_postgres::Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream,
>;

impl Settings {
    /// The settings of the store at `url`, whose connections name themselves `application_name`
    /// (what `pg_stat_activity` shows) unless the URL does.
    pub(crate) fn of(url: &str, application_name: &str) -> Result<Settings, PgOpenError> {
        let parsed = parse(url);
        let mut config: tokio_postgres::Config = parsed.rest.parse().map_err(PgOpenError::Url)?;
        let names = |key: &str| parsed.keys.iter().any(|k| k == key);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECTION_WAIT);
        }
        if config.get_application_name().is_none() {
            config.application_name(application_name);
        }
        if !names("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(10));
        }
        if !names("keepalives_interval") {
            config.keepalives_interval(Duration::from_secs(5));
        }
        if !names("keepalives_retries") {
            config.keepalives_retries(3);
        }
        if !names("tcp_user_timeout") {
            config.tcp_user_timeout(Duration::from_secs(20));
        }
        let options = match config.get_options() {
            Some(own) => format!("{SESSION_DEFAULTS} {own}"),
            None => SESSION_DEFAULTS.to_string(),
        };
        config.options(options);

        let ca_pem = match parsed.root_certificate.as_deref() {
            None | Some("system") => None,
            Some(path) => Some(
                std::fs::read_to_string(path).map_err(|source| PgOpenError::RootCertificate {
                    path: path.into(),
                    source,
                })?,
            ),
        };
        let check = match parsed.verify {
            Some(check) => {
                config.ssl_mode(SslMode::Require);
                check
            }
            // As libpq: a root certificate makes `require` check the chain.
            None if parsed.root_certificate.is_some() => ServerCheck::Chain,
            None => ServerCheck::EncryptOnly,
        };
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if config.get_ssl_mode() != SslMode::Disable
            && check == ServerCheck::EncryptOnly
            && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                application_name,
                "connections to PostgreSQL are encrypted when the server offers TLS, but its certificate is not checked; \
                 add sslmode=verify-full (and sslrootcert=<CA file>) to the store URL"
            );
        }
        let identity = match (&parsed.client_certificate, &parsed.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((read_client_file(cert)?, read_client_file(key)?)),
            (Some(named), None) | (None, Some(named)) => {
                return Err(PgOpenError::ClientCertificate {
                    path: named.into(),
                    reason: "the store URL must name both sslcert (the certificate) and sslkey (its key)".into(),
                })
            }
        };
        let identity = identity.as_ref().map(|(cert, key)| (cert.as_str(), key.as_str()));
        let tls = dps_pki::tls::client_config_checking(check, ca_pem.as_deref(), identity).map_err(PgOpenError::Tls)?;
        Ok(Settings {
            config,
            tls: MakeRustlsConnect::new(std::sync::Arc::unwrap_or_clone(tls)),
        })
    }

    /// These settings with the server setting `name` = `value` for every session.
    pub(crate) fn with(mut self, name: &str, value: &str) -> Settings {
        let options = format!("{} -c {name}={value}", self.config.get_options().unwrap_or_default());
        self.config.options(options);
        self
    }

    /// Opens one connection.
    pub(crate) async fn connect(&self) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }

    /// A pool of at most `size` connections, bounded in waiting as every call must be (a
    /// request fails in seconds rather than hangs while PostgreSQL is away).
    pub(crate) fn pool(self, size: usize) -> Result<Pool, PgOpenError> {
        let manager = Manager::from_config(
            self.config,
            self.tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECTION_WAIT))
            .create_timeout(Some(CONNECTION_WAIT))
            .recycle_timeout(Some(CONNECTION_WAIT))
            .build()
            .map_err(PgOpenError::Pool)
    }
}

/// The PEM text of the client certificate or key file `path`.
fn read_client_file(path: &str) -> Result<String, PgOpenError> {
    std::fs::read_to_string(path).map_err(|e| PgOpenError::ClientCertificate {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// A store URL with the libpq keys tokio-postgres lacks taken out.
#[derive(Debug, Default, PartialEq)]
struct Parsed {
    /// What tokio-postgres parses: the URL without `sslrootcert`, `sslmode=verify-*` made
    /// `sslmode=require`.
    rest: String,
    /// Every key the URL names, in order.
    keys: Vec<String>,
    /// `sslmode=verify-ca` or `verify-full`.
    verify: Option<ServerCheck>,
    /// `sslrootcert`: a PEM file, or `system`.
    root_certificate: Option<String>,
    /// `sslcert`: the client certificate's PEM file (leaf first, intermediates after).
    client_certificate: Option<String>,
    /// `sslkey`: its key's PEM file (unencrypted).
    client_key: Option<String>,
}

/// What a URL's `key=value` becomes: kept as written, or replaced.
fn take(key: &str, value: &str, parsed: &mut Parsed) -> Option<Option<&'static str>> {
    parsed.keys.push(key.to_string());
    match (key, value) {
        ("sslrootcert", path) => {
            parsed.root_certificate = Some(path.to_string());
            Some(None)
        }
        ("sslcert", path) => {
            parsed.client_certificate = Some(path.to_string());
            Some(None)
        }
        ("sslkey", path) => {
            parsed.client_key = Some(path.to_string());
            Some(None)
        }
        ("sslmode", "verify-ca") => {
            parsed.verify = Some(ServerCheck::Chain);
            Some(Some("sslmode=require"))
        }
        ("sslmode", "verify-full") => {
            parsed.verify = Some(ServerCheck::Full);
            Some(Some("sslmode=require"))
        }
        _ => None,
    }
}

/// Splits `url` into what tokio-postgres reads and what this module does. A string neither form
/// reads is passed on whole, for tokio-postgres to say what is wrong with it.
fn parse(url: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let Some(params) = Params::of(url) else {
        parsed.rest = url.to_string();
        return parsed;
    };
    let mut kept = Vec::new();
    for (key, value, written) in &params.pairs {
        match take(key, value, &mut parsed) {
            None => kept.push(written.clone()),
            Some(Some(replacement)) => kept.push(replacement.to_string()),
            Some(None) => {}
        }
    }
    parsed.rest = params.with(&params.base, kept);
    parsed
}

/// `url` as logs and banners may show it: without the password, wherever a URL carries one (the
/// user information of a `postgres://` URL, a `password` parameter or keyword). A string that
/// is neither form is not shown at all.
pub fn without_password(url: &str) -> String {
    let Some(params) = Params::of(url) else {
        return "(a store URL that cannot be read)".to_string();
    };
    let mut base = params.base.clone();
    if let Some(after_scheme) = base.find("://").map(|i| i + 3) {
        let authority_end = base[after_scheme..].find('/').map_or(base.len(), |i| after_scheme + i);
        if let Some(at) = base[after_scheme..authority_end].rfind('@').map(|i| after_scheme + i) {
            let user = base[after_scheme..at].split(':').next().unwrap_or_default();
            base = format!("{}{user}{}", &base[..after_scheme], &base[at..]);
        }
    }
    let kept = params
        .pairs
        .iter()
        .filter(|(key, _, _)| key != "password")
        .map(|(_, _, written)| written.clone())
        .collect();
    params.with(&base, kept)
}

/// A store URL taken apart into its parameters, in either form libpq reads.
struct Params {
    /// `postgres://…` up to its `?`, or nothing for a keyword string.
    base: String,
    /// Each parameter's key and value (decoded) and its text as written.
    pairs: Vec<(String, String, String)>,
    /// Whether it is a `postgres://` URL (parameters joined by `&`) or a keyword string (by
    /// spaces).
    url_form: bool,
}

impl Params {
    /// `url`'s parameters; `None` when it is neither form.
    fn of(url: &str) -> Option<Params> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return key_value_pairs(url).map(|pairs| Params {
                base: String::new(),
                pairs,
                url_form: false,
            });
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(key), decode(value), pair.to_string())
            })
            .collect();
        Some(Params {
            base: base.to_string(),
            pairs,
            url_form: true,
        })
    }

    /// The URL of `base` with the parameters `kept` (as written), in this URL's form.
    fn with(&self, base: &str, kept: Vec<String>) -> String {
        match (self.url_form, kept.is_empty()) {
            (true, true) => base.to_string(),
            (true, false) => format!("{base}?{}", kept.join("&")),
            (false, _) => kept.join(" "),
        }
    }
}

/// The `key = value` pairs of a libpq keyword string, each with its text as written; `None`
/// when it is not one (tokio-postgres then reports it). Values may be single-quoted, and a
/// backslash escapes the next character.
fn key_value_pairs(s: &str) -> Option<Vec<(String, String, String)>> {
    let mut pairs = Vec::new();
    let mut chars = s.char_indices().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            return Some(pairs);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        chars.next_if(|(_, c)| *c == '=')?;
        skip_space(&mut chars);
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let end = loop {
            match chars.next() {
                None if quoted => return None,
                None => break s.len(),
                Some((i, c)) if !quoted && c.is_whitespace() => break i,
                Some((i, '\'')) if quoted => break i + 1,
                Some((_, '\\')) => value.push(chars.next()?.1),
                Some((_, c)) => value.push(c),
            }
        };
        if key.is_empty() {
            return None;
        }
        pairs.push((key, value, s[start..end].to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_the_keys_tokio_postgres_lacks() {
        let p = parse("postgres://u:p@db:5432/dps?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&keepalives_idle=3");
        assert_eq!(p.rest, "postgres://u:p@db:5432/dps?sslmode=require&keepalives_idle=3");
        assert_eq!(p.verify, Some(ServerCheck::Full));
        assert_eq!(p.root_certificate.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(p.keys, ["sslmode", "sslrootcert", "keepalives_idle"]);

        let p = parse("postgresql://db/dps?sslrootcert=system");
        assert_eq!(p.rest, "postgresql://db/dps");
        assert_eq!((p.verify, p.root_certificate.as_deref()), (None, Some("system")));

        let p = parse("postgres://db/dps?sslcert=/c.pem&application_name=x&sslkey=%2Fc.key");
        assert_eq!(p.rest, "postgres://db/dps?application_name=x");
        assert_eq!(
            (p.client_certificate.as_deref(), p.client_key.as_deref()),
            (Some("/c.pem"), Some("/c.key"))
        );

        let p = parse("postgres://db/dps");
        assert_eq!(
            p,
            Parsed {
                rest: "postgres://db/dps".into(),
                ..Default::default()
            }
        );
    }

    #[test]
    fn keyword_strings_lose_them_too() {
        let p = parse("host=db user=dps sslmode = verify-ca sslrootcert='/my ca\\'s.pem' password=a\\ b");
        assert_eq!(p.rest, "host=db user=dps sslmode=require password=a\\ b");
        assert_eq!(p.verify, Some(ServerCheck::Chain));
        assert_eq!(p.root_certificate.as_deref(), Some("/my ca's.pem"));
        assert_eq!(p.keys, ["host", "user", "sslmode", "sslrootcert", "password"]);
        // Not a keyword string: passed on whole for tokio-postgres to refuse.
        assert_eq!(parse("host=db sslrootcert='open").rest, "host=db sslrootcert='open");
        assert_eq!(parse("=x").rest, "=x");
    }

    #[test]
    fn passwords_are_not_shown() {
        for (url, shown) in [
            ("postgres://dps:secret@db:5432/dps", "postgres://dps@db:5432/dps"),
            (
                "postgres://dps@db/dps?password=secret&sslmode=require",
                "postgres://dps@db/dps?sslmode=require",
            ),
            (
                "postgresql://db/dps?sslrootcert=/a@b.pem",
                "postgresql://db/dps?sslrootcert=/a@b.pem",
            ),
            ("postgres://u:p@db", "postgres://u@db"),
            ("host=db password='se cret' user=dps", "host=db user=dps"),
            ("host=db password='open", "(a store URL that cannot be read)"),
        ] {
            assert_eq!(without_password(url), shown, "{url}");
        }
    }

    #[test]
    fn defaults_yield_to_the_url() {
        let s = Settings::of(
            "postgres://db/dps?options=-c%20statement_timeout%3D5s&keepalives_idle=60",
            "t",
        )
        .unwrap();
        assert_eq!(
            s.config.get_options(),
            Some("-c statement_timeout=30s -c idle_in_transaction_session_timeout=30s -c statement_timeout=5s")
        );
        assert_eq!(s.config.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(s.config.get_keepalives_interval(), Some(Duration::from_secs(5)));
        assert_eq!(s.config.get_tcp_user_timeout(), Some(&Duration::from_secs(20)));
        assert_eq!(s.config.get_application_name(), Some("t"));
        let s = s.with("synchronous_commit", "off");
        assert!(s.config.get_options().unwrap().ends_with("-c synchronous_commit=off"));
        assert!(matches!(
            Settings::of(
                "postgres://db/dps?sslmode=verify-full&sslrootcert=/nonexistent.pem",
                "t"
            ),
            Err(PgOpenError::RootCertificate { .. })
        ));
    }
}
