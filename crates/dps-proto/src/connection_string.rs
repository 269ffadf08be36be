//! `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..` connection strings (service and device).

use std::fmt;

/// A parsed connection string. Keys are matched case-insensitively on input (as azure-core does) and
/// written in the canonical Azure spelling.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectionString {
    /// `HostName`, required.
    pub host_name: String,
    /// `SharedAccessKeyName` (service strings).
    pub key_name: Option<String>,
    /// `SharedAccessKey` (base64).
    pub key: Option<String>,
    /// `DeviceId` (device strings).
    pub device_id: Option<String>,
    /// `GatewayHostName`: the machine to connect to when it is not `HostName` (a gateway, or
    /// a server running several hubs whose names do not resolve); credentials still name
    /// `HostName`.
    pub gateway_host_name: Option<String>,
}

/// Why a connection string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionStringError {
    /// A `;`-separated part had no `=`.
    #[error("connection string part '{0}' is not key=value")]
    BadPart(String),
    /// A required key is missing.
    #[error("connection string has no {0}")]
    Missing(&'static str),
}

impl ConnectionString {
    /// Parses a connection string; `HostName` is required, everything else optional.
    pub fn parse(s: &str) -> Result<Self, ConnectionStringError> {
        let mut cs = ConnectionString::default();
        for part in s.trim().split(';').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| ConnectionStringError::BadPart(part.to_string()))?;
            let v = v.trim().to_string();
            match k.trim().to_ascii_lowercase().as_str() {
                "hostname" => cs.host_name = v,
                "sharedaccesskeyname" => cs.key_name = Some(v),
                "sharedaccesskey" => cs.key = Some(v),
                "deviceid" => cs.device_id = Some(v),
                "gatewayhostname" => cs.gateway_host_name = Some(v),
                _ => {}
            }
        }
        if cs.host_name.is_empty() {
            return Err(ConnectionStringError::Missing("HostName"));
        }
        Ok(cs)
    }

    /// A service connection string for a shared-access policy.
    pub fn service(host_name: &str, key_name: &str, key: &str) -> Self {
        Self {
            host_name: host_name.into(),
            key_name: Some(key_name.into()),
            key: Some(key.into()),
            device_id: None,
            gateway_host_name: None,
        }
    }

    /// The machine to connect to: `GatewayHostName` when given, else `HostName`.
    pub fn connect_host(&self) -> &str {
        self.gateway_host_name.as_deref().unwrap_or(&self.host_name)
    }
}

impl fmt::Display for ConnectionString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostName={}", self.host_name)?;
        if let Some(d) = &self.device_id {
            write!(f, ";DeviceId={d}")?;
        }
        if let Some(n) = &self.key_name {
            write!(f, ";SharedAccessKeyName={n}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ";SharedAccessKey={k}")?;
        }
        if let Some(g) = &self.gateway_host_name {
            write!(f, ";GatewayHostName={g}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_case_insensitive_keys() {
        let s = "HostName=dps.example.test;SharedAccessKeyName=provisioningserviceowner;SharedAccessKey=YWJj=";
        let cs = ConnectionString::parse(s).unwrap();
        assert_eq!(cs.key.as_deref(), Some("YWJj="));
        assert_eq!(cs.to_string(), s);
        let cs2 = ConnectionString::parse("hostname=h;sharedaccesskey=k;deviceid=d").unwrap();
        assert_eq!(cs2.device_id.as_deref(), Some("d"));
        assert_eq!(cs2.connect_host(), "h");
        let via = "HostName=hub-b.test;SharedAccessKeyName=o;SharedAccessKey=YWJj=;GatewayHostName=127.0.0.5";
        let cs3 = ConnectionString::parse(via).unwrap();
        assert_eq!(
            (cs3.host_name.as_str(), cs3.connect_host()),
            ("hub-b.test", "127.0.0.5")
        );
        assert_eq!(cs3.to_string(), via);
        assert_eq!(
            ConnectionString::parse("SharedAccessKey=k"),
            Err(ConnectionStringError::Missing("HostName"))
        );
        assert!(matches!(
            ConnectionString::parse("HostName"),
            Err(ConnectionStringError::BadPart(_))
        ));
    }
}
