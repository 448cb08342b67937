//! AIP v1alpha2 identity: signed session tokens, policy hashes and signatures, tool schema
//! hashes, and the nonce/revocation store.
