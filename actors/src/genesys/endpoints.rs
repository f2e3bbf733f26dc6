//! Where Genesys lives: a region key or domain, or explicit base URLs.

use url::Url;

/// Region keys and their domains, from the official SDKs.
pub const REGIONS: &[(&str, &str)] = &[
    ("us_east_1", "mypurecloud.com"),
    ("us_east_2", "use2.us-gov-pure.cloud"),
    ("us_west_2", "usw2.pure.cloud"),
    ("ca_central_1", "cac1.pure.cloud"),
    ("sa_east_1", "sae1.pure.cloud"),
    ("mx_central_1", "mxc1.pure.cloud"),
    ("eu_west_1", "mypurecloud.ie"),
    ("eu_west_2", "euw2.pure.cloud"),
    ("eu_central_1", "mypurecloud.de"),
    ("eu_central_2", "euc2.pure.cloud"),
    ("eusc_de_east_1", "edee1.eusc-pure.cloud"),
    ("me_central_1", "mec1.pure.cloud"),
    ("ap_south_1", "aps1.pure.cloud"),
    ("ap_northeast_1", "mypurecloud.jp"),
    ("ap_northeast_2", "apne2.pure.cloud"),
    ("ap_northeast_3", "apne3.pure.cloud"),
    ("ap_southeast_1", "apse1.pure.cloud"),
    ("ap_southeast_2", "mypurecloud.com.au"),
];

/// The base URLs the bridge talks to, without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// REST API, e.g. `https://api.mypurecloud.com`.
    pub api: String,
    /// OAuth, e.g. `https://login.mypurecloud.com`.
    pub login: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EndpointError {
    #[error("unknown region {0:?}: use a region key (e.g. us_east_1), a domain (e.g. mypurecloud.com), or set api_url and login_url")]
    UnknownRegion(String),
    #[error("{field} is not a valid http(s) URL: {value:?}")]
    BadUrl { field: &'static str, value: String },
}

impl Endpoints {
    /// Endpoints of a region given by key (`eu_west_1`) or domain (`mypurecloud.ie`).
    pub fn for_region(region: &str) -> Result<Self, EndpointError> {
        let wanted = region.trim().to_ascii_lowercase();
        let domain = REGIONS
            .iter()
            .find(|(key, domain)| *key == wanted || *domain == wanted)
            .map(|(_, domain)| *domain)
            .ok_or_else(|| EndpointError::UnknownRegion(region.to_string()))?;
        Ok(Self {
            api: format!("https://api.{domain}"),
            login: format!("https://login.{domain}"),
        })
    }

    /// Explicit base URLs (tests, the simulator, private endpoints).
    pub fn explicit(api: &str, login: &str) -> Result<Self, EndpointError> {
        Ok(Self {
            api: checked_base("api_url", api)?,
            login: checked_base("login_url", login)?,
        })
    }
}

fn checked_base(field: &'static str, value: &str) -> Result<String, EndpointError> {
    let bad = || EndpointError::BadUrl {
        field,
        value: value.to_string(),
    };
    let url = Url::parse(value).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad());
    }
    Ok(value.trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_by_key_or_domain() {
        let by_key = Endpoints::for_region("eu_west_1").unwrap();
        let by_domain = Endpoints::for_region("mypurecloud.ie").unwrap();
        assert_eq!(by_key, by_domain);
        assert_eq!(by_key.api, "https://api.mypurecloud.ie");
        assert_eq!(by_key.login, "https://login.mypurecloud.ie");
        assert!(Endpoints::for_region("mars_1").is_err());
    }

    #[test]
    fn explicit_urls_are_checked() {
        let endpoints =
            Endpoints::explicit("http://127.0.0.1:8080/", "http://127.0.0.1:8080").unwrap();
        assert_eq!(endpoints.api, "http://127.0.0.1:8080");
        assert!(Endpoints::explicit("ftp://x", "http://y").is_err());
        assert!(Endpoints::explicit("not a url", "http://y").is_err());
    }
}
