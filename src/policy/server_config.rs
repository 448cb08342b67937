//! `spec.server` (AIP v1alpha2 §3.8): the validated model of the HTTP validation server's
//! configuration and its load-time rules (listen address, TLS off localhost, failover, endpoint
//! paths). The server module consumes it.
//!
//! Must not: bind sockets or read certificate files.

use std::path::PathBuf;
use std::time::Duration;

use super::check::{Checked, Checker, is_endpoint_path};
use super::raw::{RawEndpoints, RawFailOpen, RawServer, RawTls};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9443";

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub enabled: bool,
    /// `<host>:<port>` as written (or the default).
    pub listen: String,
    pub failover_mode: FailoverMode,
    pub timeout: Duration,
    pub tls: Option<TlsConfig>,
    pub fail_open_constraints: Option<FailOpenConstraints>,
    pub endpoints: Endpoints,
}

impl ServerConfig {
    /// Whether `listen` binds only the loopback interface.
    pub fn is_loopback(&self) -> bool {
        is_loopback_listen(&self.listen)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverMode {
    FailClosed,
    FailOpen,
    LocalPolicy,
}

impl FailoverMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverMode::FailClosed => "fail_closed",
            FailoverMode::FailOpen => "fail_open",
            FailoverMode::LocalPolicy => "local_policy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FailOpenConstraints {
    /// Normalized tool names.
    pub allowed_tools: Vec<String>,
    pub max_duration: Option<Duration>,
    pub max_requests: Option<u64>,
    pub alert_webhook: Option<String>,
    pub require_local_policy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    pub validate: String,
    pub revoke: String,
    pub jwks: String,
    pub health: String,
    pub metrics: String,
}

const P: &str = "spec.server";

pub(crate) fn validate(c: &mut Checker<'_>, raw: &RawServer) -> Checked<ServerConfig> {
    let enabled = raw.enabled.unwrap_or(false);
    let listen = match &raw.listen {
        Some(l) => {
            check_listen(c, l)?;
            l.clone()
        }
        None => DEFAULT_LISTEN.to_owned(),
    };
    let failover_mode = match &raw.failover_mode {
        Some(s) => c.one_of(
            &format!("{P}.failover_mode"),
            s,
            &[
                ("fail_closed", FailoverMode::FailClosed),
                ("fail_open", FailoverMode::FailOpen),
                ("local_policy", FailoverMode::LocalPolicy),
            ],
        )?,
        None => FailoverMode::FailClosed,
    };
    let timeout = match &raw.timeout {
        Some(s) => c.positive_duration(&format!("{P}.timeout"), s)?,
        None => Duration::from_secs(5),
    };
    let tls = match &raw.tls {
        Some(t) => Some(tls(c, t)?),
        None => None,
    };
    if enabled && !is_loopback_listen(&listen) && tls.is_none() {
        return Err(c.err(
            &format!("{P}.listen"),
            format!("`{listen}` is reachable from other hosts, and no TLS is configured"),
            Some("add `tls: {cert: …, key: …}` (PEM files), or listen on 127.0.0.1".into()),
        ));
    }
    let fail_open_constraints = match &raw.fail_open_constraints {
        Some(f) => Some(fail_open(c, f)?),
        None => None,
    };
    if failover_mode == FailoverMode::FailOpen && fail_open_constraints.is_none() {
        c.warn(
            &format!("{P}.failover_mode"),
            "fail_open without fail_open_constraints allows every call while the validation server is unreachable",
        );
    }
    let endpoints = endpoints(c, raw.endpoints.as_ref())?;
    Ok(ServerConfig {
        enabled,
        listen,
        failover_mode,
        timeout,
        tls,
        fail_open_constraints,
        endpoints,
    })
}

/// `^([a-zA-Z0-9.-]+|\*)?:[0-9]+$` (schema), plus bracketed IPv6 hosts.
fn check_listen(c: &Checker<'_>, l: &str) -> Checked<()> {
    let bad = || {
        c.err(
            &format!("{P}.listen"),
            format!("`{l}` is not a listen address"),
            Some("write `<host>:<port>` or `:<port>`, e.g. 127.0.0.1:9443".into()),
        )
    };
    let (host, port) = l.rsplit_once(':').ok_or_else(bad)?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err()
    {
        return Err(bad());
    }
    let host_ok = host.is_empty()
        || host == "*"
        || host == "::1"
        || (host.starts_with('[')
            && host.ends_with(']')
            && host[1..host.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_ok())
        || host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !host_ok {
        return Err(bad());
    }
    Ok(())
}

fn is_loopback_listen(l: &str) -> bool {
    let host = l.rsplit_once(':').map_or("", |(h, _)| h);
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]")
}

fn tls(c: &Checker<'_>, raw: &RawTls) -> Checked<TlsConfig> {
    let p = format!("{P}.tls");
    let path = |field: &str, v: &Option<String>| -> Checked<PathBuf> {
        match v {
            Some(s) => Ok(PathBuf::from(c.non_empty(&format!("{p}.{field}"), s)?)),
            None => Err(c.err(
                &format!("{p}.{field}"),
                format!("missing required field `{field}`"),
                Some("TLS needs both `cert` and `key` (PEM files)".into()),
            )),
        }
    };
    let cert = path("cert", &raw.cert)?;
    let key = path("key", &raw.key)?;
    let client_ca = match &raw.client_ca {
        Some(s) => Some(PathBuf::from(c.non_empty(&format!("{p}.client_ca"), s)?)),
        None => None,
    };
    let require_client_cert = raw.require_client_cert.unwrap_or(false);
    if require_client_cert && client_ca.is_none() {
        return Err(c.err(
            &format!("{p}.require_client_cert"),
            "client certificates cannot be verified without `client_ca`",
            Some("add `client_ca: <CA bundle PEM>`".into()),
        ));
    }
    Ok(TlsConfig {
        cert,
        key,
        client_ca,
        require_client_cert,
    })
}

fn fail_open(c: &Checker<'_>, raw: &RawFailOpen) -> Checked<FailOpenConstraints> {
    let p = format!("{P}.fail_open_constraints");
    let allowed_tools = match &raw.allowed_tools {
        Some(t) => c.name_list(&format!("{p}.allowed_tools"), t)?,
        None => Vec::new(),
    };
    let max_duration = match &raw.max_duration {
        Some(s) => Some(c.positive_duration(&format!("{p}.max_duration"), s)?),
        None => None,
    };
    if let Some(w) = &raw.alert_webhook
        && !(w.starts_with("https://") || w.starts_with("http://"))
    {
        return Err(c.err(
            &format!("{p}.alert_webhook"),
            format!("`{w}` is not an http(s) URL"),
            None,
        ));
    }
    Ok(FailOpenConstraints {
        allowed_tools,
        max_duration,
        max_requests: raw.max_requests,
        alert_webhook: raw.alert_webhook.clone(),
        require_local_policy: raw.require_local_policy.unwrap_or(false),
    })
}

fn endpoints(c: &Checker<'_>, raw: Option<&RawEndpoints>) -> Checked<Endpoints> {
    let p = format!("{P}.endpoints");
    let default = RawEndpoints::default();
    let raw = raw.unwrap_or(&default);
    let mut seen: Vec<(&str, String)> = Vec::new();
    let mut get = |field: &'static str, v: &Option<String>, dflt: &str| -> Checked<String> {
        let path = format!("{p}.{field}");
        let s = v.clone().unwrap_or_else(|| dflt.to_owned());
        if !is_endpoint_path(&s) {
            return Err(c.err(
                &path,
                format!("`{s}` is not an endpoint path"),
                Some("start with / and use letters, digits, /, _ and -".into()),
            ));
        }
        if let Some((other, _)) = seen.iter().find(|(_, x)| *x == s) {
            return Err(c.err(
                &path,
                format!("`{s}` is also the {other} endpoint"),
                Some("give each endpoint its own path".into()),
            ));
        }
        seen.push((field, s.clone()));
        Ok(s)
    };
    Ok(Endpoints {
        validate: get("validate", &raw.validate, "/v1/validate")?,
        revoke: get("revoke", &raw.revoke, "/v1/revoke")?,
        jwks: get("jwks", &raw.jwks, "/v1/jwks")?,
        health: get("health", &raw.health, "/health")?,
        metrics: get("metrics", &raw.metrics, "/metrics")?,
    })
}
