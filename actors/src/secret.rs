//! Secrets that cannot reach a log by accident.

use std::fmt;

/// A secret string (client secret, access token). `Debug` and `Display` print `<redacted>`;
/// the value is only reachable through [`Secret::expose`], which makes every use greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Call only to put it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A WebSocket connect URI. The channel id in it is the only credential the socket needs, so the
/// URI is logged as scheme, host and a shortened channel id only.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectUri(String);

impl ConnectUri {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConnectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ConnectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(&self.0) {
            Ok(url) => write!(
                f,
                "{}://{}/channels/<redacted>",
                url.scheme(),
                url.host_str().unwrap_or("?")
            ),
            Err(_) => f.write_str("<unparseable connectUri>"),
        }
    }
}

/// A channel id shortened for logs: enough to tell channels apart, not enough to connect.
pub fn short_channel_id(id: &str) -> String {
    let tail: String = id
        .chars()
        .rev()
        .take(6)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret} {secret:?}"), "<redacted> <redacted>");
        let uri = ConnectUri::new("wss://streaming.mypurecloud.com/channels/streaming-0-abcdef123");
        let shown = format!("{uri} {uri:?}");
        assert!(!shown.contains("abcdef123"), "{shown}");
        assert!(shown.contains("streaming.mypurecloud.com"));
        assert_eq!(short_channel_id("streaming-0-abcdef123"), "…def123");
    }
}
