//! Integration tests: identity.
