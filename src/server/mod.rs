//! The HTTP(S) validation server (`/v1/validate`, `/health`, `/metrics`, `/v1/revoke`, `/v1/jwks`).
