//! Prometheus metrics of the validation server (v1alpha2 §6.5 names), kept in a
//! `prometheus-client` registry and rendered as text. Label sets are structs, so label order is
//! fixed (struct field order) and scrapes are byte-for-byte stable for the same values. Must not
//! take labels from unbounded client input: tool names and paths never become labels.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which endpoint served a request.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Endpoint {
    validate,
    revoke,
    jwks,
    health,
    metrics,
    other,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub endpoint: Endpoint,
    /// HTTP status of the answer (`200`, `401`, …).
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: Endpoint,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DecisionValue {
    allow,
    block,
    ask,
    rate_limited,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub decision: DecisionValue,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    /// A fixed vocabulary (`argument_validation`, `protected_path`, …), never client text.
    pub r#type: String,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum TokenResult {
    valid,
    invalid,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub result: TokenResult,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevocationLabels {
    pub r#type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub policy_hash: String,
}

/// All metrics of one server.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<EndpointLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub violations: Family<ViolationLabels, Counter>,
    pub token_validations: Family<TokenLabels, Counter>,
    pub revocations: Family<RevocationLabels, Counter>,
    pub active_sessions: Gauge,
    pub request_duration: Family<EndpointLabels, Histogram>,
    pub policy_hash: Family<PolicyLabels, Gauge>,
    pub fail_open_requests: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every metric; `policy_hash` is exported as `aip_policy_hash{policy_hash=…} 1`.
    pub fn new(policy_hash: &str) -> Self {
        let mut registry = Registry::with_prefix("aip");
        let requests = Family::<EndpointLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests received, by endpoint",
            requests.clone(),
        );
        for endpoint in [
            Endpoint::validate,
            Endpoint::revoke,
            Endpoint::jwks,
            Endpoint::health,
            Endpoint::metrics,
        ] {
            let _ = requests.get_or_create(&EndpointLabels { endpoint });
        }
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "responses",
            "HTTP responses sent, by endpoint and status",
            responses.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Validation decisions, by decision",
            decisions.clone(),
        );
        // Pre-create the decision series so a fresh server already exports them.
        for d in [
            DecisionValue::allow,
            DecisionValue::block,
            DecisionValue::ask,
            DecisionValue::rate_limited,
        ] {
            let _ = decisions.get_or_create(&DecisionLabels { decision: d });
        }
        let violations = Family::<ViolationLabels, Counter>::default();
        registry.register(
            "violations",
            "Policy violations, by type",
            violations.clone(),
        );
        let token_validations = Family::<TokenLabels, Counter>::default();
        registry.register(
            "token_validations",
            "Identity token validations, by result",
            token_validations.clone(),
        );
        let revocations = Family::<RevocationLabels, Counter>::default();
        registry.register("revocations", "Revocations, by type", revocations.clone());
        let active_sessions = Gauge::default();
        registry.register(
            "active_sessions",
            "Distinct sessions seen with a valid token in the last token_ttl",
            active_sessions.clone(),
        );
        let request_duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 16))) as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time to answer a request, by endpoint",
            request_duration.clone(),
        );
        let policy_hash_fam = Family::<PolicyLabels, Gauge>::default();
        registry.register(
            "policy_hash",
            "Hash of the policy in force (value is always 1)",
            policy_hash_fam.clone(),
        );
        policy_hash_fam
            .get_or_create(&PolicyLabels {
                policy_hash: policy_hash.to_string(),
            })
            .set(1);
        let fail_open_requests = Counter::default();
        registry.register(
            "fail_open_requests",
            "Requests allowed under failover_mode fail_open",
            fail_open_requests.clone(),
        );
        Self {
            registry,
            requests,
            responses,
            decisions,
            violations,
            token_validations,
            revocations,
            active_sessions,
            request_duration,
            policy_hash: policy_hash_fam,
            fail_open_requests,
        }
    }

    /// Text exposition (OpenMetrics text, which Prometheus' text parser also reads).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_render_names_and_stable_order() {
        let m = Metrics::new(&"a".repeat(64));
        let fresh = m.render();
        assert!(
            fresh.contains("aip_requests_total{endpoint=\"validate\"} 0"),
            "{fresh}"
        );
        assert!(
            fresh.contains("aip_decisions_total{decision=\"allow\"} 0"),
            "{fresh}"
        );
        m.requests
            .get_or_create(&EndpointLabels {
                endpoint: Endpoint::validate,
            })
            .inc();
        m.responses
            .get_or_create(&ResponseLabels {
                endpoint: Endpoint::validate,
                status: 200,
            })
            .inc();
        m.decisions
            .get_or_create(&DecisionLabels {
                decision: DecisionValue::allow,
            })
            .inc();
        m.request_duration
            .get_or_create(&EndpointLabels {
                endpoint: Endpoint::validate,
            })
            .observe(0.002);
        let text = m.render();
        for name in [
            "aip_requests_total{endpoint=\"validate\"} 1",
            "aip_responses_total{endpoint=\"validate\",status=\"200\"} 1",
            "aip_decisions_total{decision=\"allow\"} 1",
            "aip_decisions_total{decision=\"block\"} 0",
            "aip_request_duration_seconds_bucket{le=\"0.0032\",endpoint=\"validate\"} 1",
            "aip_policy_hash{policy_hash=\"aaaa",
            "aip_fail_open_requests_total 0",
            "aip_active_sessions 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
        assert_eq!(text, m.render());
    }
}
