//! The host names this server answers to, and the checks that use them.
//!
//! Authorization never trusts the request's `Host` header: a SAS audience is compared with the
//! server's own configured names only ([`audience_hosts`]). The `Host` header is still checked
//! ([`check_host`]) so that a request addressed to some other name — a forged header, DNS
//! rebinding, a misrouted proxy — is refused with a message that names the accepted ones instead
//! of being served.

use crate::ApiError;

/// The names a SAS audience may start with: each of `names` as is and with `:port` (SDKs put
/// `host:port` in a connection string's HostName, and sign it, when the port is not 443).
/// IPv6 literals also appear in brackets. Lower-cased, without duplicates.
pub fn audience_hosts<'a>(names: impl IntoIterator<Item = &'a str>, port: u16) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    for name in names {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        if name.contains(':') {
            // An IPv6 literal: bare (as configured) and in URL form.
            push(name.clone());
            push(format!("[{name}]"));
            push(format!("[{name}]:{port}"));
        } else {
            push(name.clone());
            push(format!("{name}:{port}"));
        }
    }
    out
}

/// Splits a `Host` header value into its host and optional port: `name`, `name:443`, `[::1]`,
/// `[::1]:443`. `None` when the value is not of that shape.
fn split_host(value: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = value.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            p => Some((host, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match value.rsplit_once(':') {
        None => Some((value, None)),
        Some((host, port)) if !host.contains(':') => Some((host, Some(port.parse().ok()?))),
        // An unbracketed IPv6 literal is not a valid Host; compare it whole.
        Some(_) => Some((value, None)),
    }
}

/// Checks the request's `Host` header (and the authority of an absolute-form request target,
/// when there is one) against the server's `names` and `port`: the name must be one of them
/// (case-insensitive, a trailing dot ignored) and the port, if given, the server's. A 400 that
/// lists the accepted names otherwise.
pub fn check_host<'a>(
    host_header: Option<&str>,
    uri_authority: Option<&str>,
    names: impl IntoIterator<Item = &'a str> + Clone,
    port: u16,
) -> Result<(), ApiError> {
    let accepted = || {
        let mut shown: Vec<String> = Vec::new();
        for n in names.clone() {
            let n = if n.contains(':') {
                format!("[{n}]")
            } else {
                n.to_string()
            };
            if !shown.iter().any(|s| s.eq_ignore_ascii_case(&n)) {
                shown.push(n);
            }
        }
        shown.join(", ")
    };
    let value = host_header.map(str::trim).filter(|h| !h.is_empty()).ok_or_else(|| {
        ApiError::invalid(format!(
            "the Host header is required; this server answers to {} (port {port})",
            accepted()
        ))
    })?;
    for given in std::iter::once(value).chain(uri_authority) {
        let ok = split_host(given).is_some_and(|(host, p)| {
            let host = host.trim_end_matches('.');
            p.is_none_or(|p| p == port)
                && names
                    .clone()
                    .into_iter()
                    .any(|n| n.trim().trim_end_matches('.').eq_ignore_ascii_case(host))
        });
        if !ok {
            let shown: String = given.chars().take(100).collect();
            return Err(ApiError::invalid(format!(
                "host '{shown}' is not a name of this server; it answers to {} (port {port}); use one of them in the connection string's HostName or the URL",
                accepted()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dps_proto::codes;

    const NAMES: [&str; 3] = ["dps.example.test", "127.0.0.1", "::1"];

    #[test]
    fn own_names_with_and_without_the_port() {
        for ok in [
            "dps.example.test",
            "DPS.Example.Test",
            "dps.example.test:8443",
            "dps.example.test.",
            "127.0.0.1",
            "127.0.0.1:8443",
            "[::1]",
            "[::1]:8443",
            " dps.example.test ",
        ] {
            check_host(Some(ok), None, NAMES, 8443).unwrap_or_else(|e| panic!("{ok}: {}", e.message));
        }
    }

    #[test]
    fn other_names_ports_and_shapes_are_refused() {
        for bad in [
            "evil.test",
            "dps.example.test:443",
            "dps.example.test/enrollments/x",
            "dps.example.test.evil.test",
            "127.0.0.2",
            "[::2]:8443",
            "dps.example.test:",
            "dps.example.test:99999",
            "[::1",
        ] {
            let e = check_host(Some(bad), None, NAMES, 8443).unwrap_err();
            assert_eq!((e.status, e.code), (400, codes::ARGUMENT_INVALID), "{bad}");
            assert!(
                e.message
                    .contains("answers to dps.example.test, 127.0.0.1, [::1] (port 8443)"),
                "{bad}: {}",
                e.message
            );
        }
        let e = check_host(None, None, NAMES, 443).unwrap_err();
        assert!(e.message.contains("Host header is required"), "{}", e.message);
        // An absolute-form target names its own authority: it must be ours too.
        check_host(Some("dps.example.test"), Some("dps.example.test:443"), NAMES, 443).unwrap();
        assert!(check_host(Some("dps.example.test"), Some("evil.test"), NAMES, 443).is_err());
    }

    #[test]
    fn audience_hosts_cover_each_form() {
        assert_eq!(
            audience_hosts(["Dps.Example.Test", "::1", "dps.example.test"], 443),
            ["dps.example.test", "dps.example.test:443", "::1", "[::1]", "[::1]:443"]
        );
    }
}
