//! All integration tests form one binary; each area lives in `tests/suite/<area>.rs`.

mod support;
mod suite;
