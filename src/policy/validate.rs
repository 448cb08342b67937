//! Raw document → validated `Policy`: every load-time rejection of AIP §1.9 for the top level,
//! `metadata` and `spec` (sections with their own files validate themselves), version gating
//! (v1alpha2-only fields refused in v1alpha1 documents), normalization of names and the lookup
//! index.
//!
//! Must not: touch the file system or the environment (paths are expanded by the engine).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::check::{Checked, Checker};
use super::de::{DeError, DeErrorKind, from_node};
use super::error::{PolicyError, did_you_mean};
use super::model::{
    Action, ApiVersion, ArgPattern, DEFAULT_ALLOWED_METHODS, HashAlgorithm, Index, Metadata, Mode,
    Policy, SchemaHash, Spec, ToolRule,
};
use super::normalize::normalize;
use super::raw::{RawMetadata, RawPolicy, RawSpec, RawToolRule};
use super::units::RateLimit;
use super::yaml::{Node, NodeValue};
use super::{dlp, identity_config, re2, server_config};

/// Keys proposed in AIP appendices or later versions that this implementation does not accept.
const FUTURE_SPEC_KEYS: &[&str] = &["extends", "telemetry", "registry", "aat"];

pub(crate) fn validate(
    origin: &str,
    root: &Node,
    source: Option<PathBuf>,
) -> Result<Policy, PolicyError> {
    let version = header(origin, root)?;
    let mut c = Checker::new(origin, root, version);
    let raw: RawPolicy = from_node(root, "").map_err(|e| de_error(&c, e))?;
    let metadata = metadata(&c, raw.metadata.as_ref())?;
    let Some(raw_spec) = &raw.spec else {
        return Err(c.err(
            "spec",
            "missing required field `spec`",
            Some("add `spec:` with at least `allowed_tools: [...]`".into()),
        ));
    };
    let spec = spec(&mut c, raw_spec, &metadata.name)?;
    let index = index(&spec);
    for w in &c.warnings {
        tracing::warn!(policy = origin, "{w}");
    }
    Ok(Policy {
        api_version: version,
        metadata,
        spec,
        origin: origin.to_owned(),
        source,
        document: root.to_json(),
        warnings: c.warnings,
        index,
    })
}

/// `apiVersion` and `kind`, checked before anything else so a wrong version is reported as such
/// (not as a pile of unknown fields).
fn header(origin: &str, root: &Node) -> Result<ApiVersion, PolicyError> {
    let at = |path: &str, msg: String, hint: Option<String>| {
        PolicyError::invalid(origin, Some(root.locate(path).pos), path, msg, hint)
    };
    if !matches!(root.value, NodeValue::Map(_)) {
        return Err(at(
            "",
            format!(
                "a policy must be a mapping with apiVersion, kind, metadata and spec, not {}",
                root.value.kind()
            ),
            None,
        ));
    }
    let version = match root.get("apiVersion").map(|n| &n.value) {
        None => {
            return Err(at(
                "apiVersion",
                "missing required field `apiVersion`".into(),
                Some(
                    "start the file with `apiVersion: aip.io/v1alpha1` (or aip.io/v1alpha2)".into(),
                ),
            ));
        }
        Some(NodeValue::Str(s)) => match ApiVersion::parse(s) {
            Some(v) => v,
            None => {
                let hint = match did_you_mean(s, &ApiVersion::ALL) {
                    Some(d) => format!(
                        "did you mean `{d}`? supported: {}",
                        ApiVersion::ALL.join(", ")
                    ),
                    None => format!("supported: {}", ApiVersion::ALL.join(", ")),
                };
                return Err(at(
                    "apiVersion",
                    format!("unsupported apiVersion `{s}`"),
                    Some(hint),
                ));
            }
        },
        Some(other) => {
            return Err(at(
                "apiVersion",
                format!("expected a string, found {}", other.kind()),
                None,
            ));
        }
    };
    match root.get("kind").map(|n| &n.value) {
        Some(NodeValue::Str(k)) if k == "AgentPolicy" => Ok(version),
        Some(NodeValue::Str(k)) => Err(at(
            "kind",
            format!("unsupported kind `{k}`"),
            Some("the only kind is `AgentPolicy`".into()),
        )),
        Some(other) => Err(at(
            "kind",
            format!("expected a string, found {}", other.kind()),
            None,
        )),
        None => Err(at(
            "kind",
            "missing required field `kind`".into(),
            Some("add `kind: AgentPolicy`".into()),
        )),
    }
}

fn de_error(c: &Checker<'_>, e: DeError) -> PolicyError {
    let path = e.path.clone().unwrap_or_default();
    let hint = match &e.kind {
        DeErrorKind::UnknownField { field, expected } => {
            let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
            if parent == "spec" && FUTURE_SPEC_KEYS.contains(&field.as_str()) {
                Some(format!(
                    "`spec.{field}` is a proposal of a later AIP version and is not supported"
                ))
            } else {
                Some(match did_you_mean(field, expected) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("valid fields here: {}", expected.join(", ")),
                })
            }
        }
        DeErrorKind::WrongType {
            expected: "a string",
            found,
        } if *found != "a mapping" && *found != "a list" => {
            Some("quote the value to make it a string".into())
        }
        DeErrorKind::WrongType {
            expected: "`true` or `false`",
            ..
        } => Some("write `true` or `false`".into()),
        DeErrorKind::WrongType {
            expected: "a list", ..
        } => Some("write a YAML list: `[a, b]`, or one `- item` per line".into()),
        DeErrorKind::WrongType {
            expected: "a mapping",
            ..
        } => Some("write `key: value` entries indented under this key".into()),
        DeErrorKind::WrongType {
            expected: "an integer",
            ..
        } => Some("write a whole number without quotes".into()),
        DeErrorKind::MissingField(f) => Some(format!("add `{f}:`")),
        DeErrorKind::WrongType { .. } | DeErrorKind::Message(_) => {
            Some("see the AgentPolicy reference for the expected shape of this field".into())
        }
    };
    PolicyError::invalid(c.origin, e.pos, path, e.to_string(), hint)
}

fn metadata(c: &Checker<'_>, raw: Option<&RawMetadata>) -> Checked<Metadata> {
    let Some(m) = raw else {
        return Err(c.err(
            "metadata",
            "missing required field `metadata`",
            Some("add `metadata: {name: my-agent}`".into()),
        ));
    };
    let Some(name) = &m.name else {
        return Err(c.err(
            "metadata.name",
            "missing required field `name`",
            Some("a name such as `my-agent` (lowercase letters, digits, `-`)".into()),
        ));
    };
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !name_ok {
        return Err(c.err(
            "metadata.name",
            format!("`{name}` is not a valid name"),
            Some("use 1–253 lowercase letters, digits and `-`, starting and ending with a letter or digit".into()),
        ));
    }
    if let Some(v) = &m.version
        && !is_semver(v)
    {
        return Err(c.err(
            "metadata.version",
            format!("`{v}` is not a semantic version"),
            Some("write MAJOR.MINOR.PATCH, e.g. `1.0.0` or `2.1.0-beta`".into()),
        ));
    }
    if let Some(o) = &m.owner
        && !is_email(o)
    {
        return Err(c.err(
            "metadata.owner",
            format!("`{o}` is not an email address"),
            None,
        ));
    }
    c.require_v1alpha2("metadata.signature", m.signature.is_some())?;
    if let Some(s) = &m.signature {
        let ok = s.split_once(':').is_some_and(|(alg, b64)| {
            matches!(alg, "ed25519" | "ecdsa-p256")
                && !b64.is_empty()
                && b64
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        });
        if !ok {
            return Err(c.err(
                "metadata.signature",
                "not of the form `ed25519:<base64>`",
                Some("produce it with `aip policy sign`".into()),
            ));
        }
    }
    Ok(Metadata {
        name: name.clone(),
        version: m.version.clone(),
        owner: m.owner.clone(),
        signature: m.signature.clone(),
    })
}

fn is_semver(v: &str) -> bool {
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && pre.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@')
}

fn spec(c: &mut Checker<'_>, raw: &RawSpec, agent: &str) -> Checked<Spec> {
    let mode = match &raw.mode {
        Some(m) => c.one_of(
            "spec.mode",
            m,
            &[("enforce", Mode::Enforce), ("monitor", Mode::Monitor)],
        )?,
        None => Mode::Enforce,
    };
    if mode == Mode::Monitor {
        c.warn(
            "spec.mode",
            "monitor mode forwards policy violations and only records them",
        );
    }
    let allowed_tools = match &raw.allowed_tools {
        Some(t) => {
            let names = c.name_list("spec.allowed_tools", t)?;
            if names.iter().any(|n| n == "*") {
                c.warn(
                    "spec.allowed_tools",
                    "`*` is not a wildcard: it allows only a tool literally named `*`",
                );
            }
            Some(names)
        }
        None => None,
    };
    let (allowed_methods, allowed_methods_explicit) = match &raw.allowed_methods {
        Some(m) if m.is_empty() => {
            c.warn(
                "spec.allowed_methods",
                "an empty list means the default methods (list methods, or `*`)",
            );
            (default_methods(), false)
        }
        Some(m) => (c.name_list("spec.allowed_methods", m)?, true),
        None => (default_methods(), false),
    };
    let denied_methods = match &raw.denied_methods {
        Some(m) => {
            let names = c.name_list("spec.denied_methods", m)?;
            if let Some(i) = names.iter().position(|n| n == "*") {
                return Err(c.err(
                    &format!("spec.denied_methods[{i}]"),
                    "`*` is not supported in denied_methods",
                    Some("list the methods to allow in `allowed_methods` instead".into()),
                ));
            }
            names
        }
        None => Vec::new(),
    };
    let strict_args_default = raw.strict_args_default.unwrap_or(false);
    let tool_rules = match &raw.tool_rules {
        Some(rules) => tool_rules(c, rules, strict_args_default)?,
        None => Vec::new(),
    };
    let protected_paths = match &raw.protected_paths {
        Some(p) => {
            c.unique_strings("spec.protected_paths", p)?;
            for (i, e) in p.iter().enumerate() {
                if e.contains(['*', '?']) {
                    c.warn(
                        &format!("spec.protected_paths[{i}]"),
                        format!("`{e}` is matched literally: `*` and `?` are not wildcards here"),
                    );
                }
            }
            p.clone()
        }
        None => Vec::new(),
    };
    let dlp = match &raw.dlp {
        Some(d) => Some(dlp::validate(c, d)?),
        None => None,
    };
    c.require_v1alpha2("spec.identity", raw.identity.is_some())?;
    c.require_v1alpha2("spec.server", raw.server.is_some())?;
    let identity = match &raw.identity {
        Some(i) => Some(identity_config::validate(c, i, agent)?),
        None => None,
    };
    let server = match &raw.server {
        Some(s) => Some(server_config::validate(c, s)?),
        None => None,
    };
    if let (Some(i), Some(s)) = (&identity, &server)
        && s.enabled
        && i.keys.signing_algorithm == identity_config::SigningAlgorithm::Hs256
    {
        return Err(c.err(
            "spec.identity.keys.signing_algorithm",
            "HS256 cannot be used with the validation server enabled",
            Some(
                "use ES256 (default) or EdDSA: remote verifiers must not hold the signing secret"
                    .into(),
            ),
        ));
    }
    if let Some(s) = &raw.sandbox {
        extension_check(c, "spec.sandbox", sandbox_validate(s))?;
    }
    if let Some(e) = &raw.egress {
        extension_check(c, "spec.egress", egress_validate(e))?;
    }
    Ok(Spec {
        mode,
        allowed_tools,
        allowed_methods,
        allowed_methods_explicit,
        denied_methods,
        tool_rules,
        protected_paths,
        strict_args_default,
        dlp,
        identity,
        server,
        sandbox: raw.sandbox.clone(),
        egress: raw.egress.clone(),
    })
}

/// (field path relative to `spec.sandbox`, message).
fn sandbox_validate(cfg: &super::sandbox_config::SandboxConfig) -> Result<(), (String, String)> {
    cfg.validate()
}

/// (field path relative to `spec.egress`, message).
fn egress_validate(cfg: &super::egress_config::EgressConfig) -> Result<(), (String, String)> {
    cfg.validate()
}

fn extension_check(c: &Checker<'_>, section: &str, r: Result<(), (String, String)>) -> Checked<()> {
    r.map_err(|(field, message)| {
        let path = if field.is_empty() {
            section.to_owned()
        } else {
            format!("{section}.{field}")
        };
        let (message, hint) = match message.split_once("\n  hint: ") {
            Some((m, h)) => (m.to_owned(), Some(h.to_owned())),
            None => (message, None),
        };
        c.err(&path, message, hint)
    })
}

fn default_methods() -> Vec<String> {
    DEFAULT_ALLOWED_METHODS
        .iter()
        .map(|m| (*m).to_owned())
        .collect()
}

fn tool_rules(
    c: &mut Checker<'_>,
    rules: &[RawToolRule],
    strict_default: bool,
) -> Checked<Vec<ToolRule>> {
    let mut out: Vec<ToolRule> = Vec::with_capacity(rules.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        let p = format!("spec.tool_rules[{i}]");
        let Some(written) = &r.tool else {
            return Err(c.err(
                &format!("{p}.tool"),
                "missing required field `tool`",
                Some("name the tool this rule applies to".into()),
            ));
        };
        let tool = normalize(written).into_owned();
        if tool.is_empty() {
            return Err(c.err(
                &format!("{p}.tool"),
                format!("`{written}` is empty after normalization"),
                None,
            ));
        }
        if let Some(first) = seen.insert(tool.clone(), i) {
            return Err(c.err(
                &format!("{p}.tool"),
                format!("a second rule for `{tool}` (the first is spec.tool_rules[{first}])"),
                Some("merge the two rules into one".into()),
            ));
        }
        let action = match &r.action {
            Some(a) => c.one_of(
                &format!("{p}.action"),
                a,
                &[
                    ("allow", Action::Allow),
                    ("block", Action::Block),
                    ("ask", Action::Ask),
                ],
            )?,
            None => Action::Allow,
        };
        let rate_limit = match &r.rate_limit {
            Some(s) => {
                Some(RateLimit::parse(s).map_err(|m| c.err(&format!("{p}.rate_limit"), m, None))?)
            }
            None => None,
        };
        let mut allow_args = Vec::new();
        if let Some(args) = &r.allow_args {
            let mut names = HashSet::new();
            for (name, pattern) in &args.0 {
                let ap = format!("{p}.allow_args.{name}");
                if name.is_empty() {
                    return Err(c.err(&ap, "argument names must not be empty", None));
                }
                if !names.insert(name.as_str()) {
                    return Err(c.err(&ap, format!("argument `{name}` is listed twice"), None));
                }
                let regex = re2::compile(pattern).map_err(|m| {
                    c.err(&ap, m, Some("allow_args values are RE2 regexes: no backreferences or lookaround; anchor with ^…$".into()))
                })?;
                if !pattern.starts_with('^') && !pattern.starts_with("\\A") {
                    c.warn(
                        &ap,
                        format!("`{pattern}` is not anchored: it matches anywhere in the value (write `^…$` to match the whole value)"),
                    );
                }
                allow_args.push(ArgPattern {
                    name: name.clone(),
                    pattern: pattern.clone(),
                    regex,
                });
            }
        }
        c.require_v1alpha2(&format!("{p}.schema_hash"), r.schema_hash.is_some())?;
        let schema_hash = match &r.schema_hash {
            Some(s) => Some(schema_hash(c, &format!("{p}.schema_hash"), s)?),
            None => None,
        };
        if action == Action::Block
            && (!allow_args.is_empty() || rate_limit.is_some() || r.strict_args.is_some())
        {
            c.warn(
                &p,
                format!(
                    "`{tool}` is blocked: allow_args, strict_args and rate_limit have no effect"
                ),
            );
        }
        out.push(ToolRule {
            tool,
            written: written.clone(),
            action,
            rate_limit,
            strict_args: r.strict_args.unwrap_or(strict_default),
            allow_args,
            schema_hash,
        });
    }
    Ok(out)
}

fn schema_hash(c: &Checker<'_>, path: &str, s: &str) -> Checked<SchemaHash> {
    let Some((alg, hex)) = s.split_once(':') else {
        return Err(c.err(
            path,
            format!("`{s}` is not of the form `<algorithm>:<hex digest>`"),
            Some("compute it with `aip schema-hash`".into()),
        ));
    };
    let algorithm = c.one_of(
        path,
        alg,
        &[
            ("sha256", HashAlgorithm::Sha256),
            ("sha384", HashAlgorithm::Sha384),
            ("sha512", HashAlgorithm::Sha512),
        ],
    )?;
    if hex.len() != algorithm.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(c.err(
            path,
            format!(
                "a {} digest is {} hex characters",
                algorithm.as_str(),
                algorithm.hex_len()
            ),
            Some("compute it with `aip schema-hash`".into()),
        ));
    }
    Ok(SchemaHash {
        algorithm,
        hex: hex.to_ascii_lowercase(),
    })
}

fn index(spec: &Spec) -> Index {
    Index {
        allowed_tools: spec.allowed_tools.iter().flatten().cloned().collect(),
        rules: spec
            .tool_rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.tool.clone(), i))
            .collect(),
        any_method: spec.allowed_methods.iter().any(|m| m == "*"),
        allowed_methods: spec.allowed_methods.iter().cloned().collect(),
        denied_methods: spec.denied_methods.iter().cloned().collect(),
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
