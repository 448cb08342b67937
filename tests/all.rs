//! All integration tests form one binary; each area lives in `tests/suite/<area>.rs`.

mod suite;
mod support;
