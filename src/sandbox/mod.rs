//! The OS sandbox: namespaces, a tmpfs root assembled from an allowlist, Landlock, seccomp,
//! capabilities, cgroups and a reaper. `SandboxSpec` is plain data; `spawn` applies the layers in a
//! documented order and reports which are in force.

pub mod net;
