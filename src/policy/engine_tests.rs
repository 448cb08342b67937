//! Unit tests of the engine: check order, monitor mode, rate limits, ask, visibility, DLP.

#[allow(unused_imports)]
use super::*;
