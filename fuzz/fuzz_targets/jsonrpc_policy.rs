//! Framing + the strict parser + evaluation, on arbitrary bytes: no panic, bounded memory, and
//! the parser's verdict on a line never depends on how the bytes were split into reads.
#![no_main]

use std::io::Read;
use std::sync::{Arc, OnceLock};

use aip::jsonrpc::{Frame, Kind, LineReader, Origin, parse};
use aip::policy::{Engine, EvalContext, load_str};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {name: fuzz}\nspec:\n  allowed_tools: [echo, read_file]\n  tool_rules:\n    - tool: read_file\n      allow_args: {path: '^/tmp/'}\n      strict_args: true\n    - tool: run\n      action: ask\n  protected_paths: [~/.ssh, /etc/shadow]\n  dlp:\n    scan_requests: true\n    patterns:\n      - {name: key, regex: 'AKIA[A-Z0-9]{16}'}\n";

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let p = Arc::new(load_str(POLICY, "fuzz.yaml").expect("fuzz policy"));
        Engine::new(p, EvalContext::new("/tmp").with_symlink_resolution(false))
    })
}

/// Hands out the input in pieces of the sizes its first byte picks.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let (step, body) = match data.split_first() {
        Some((s, rest)) => ((*s as usize % 64) + 1, rest),
        None => return,
    };
    let mut reader = LineReader::new(Pieces { data: body, step }, 4096);
    let whole: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
    let mut i = 0;
    while let Ok(Some(frame)) = reader.next_frame() {
        if let Frame::Line(line) = frame {
            // Same bytes as a plain split (no line is merged, cut or lost by the framing).
            assert_eq!(Some(&line), whole.get(i));
            for origin in [Origin::Client, Origin::Server] {
                let Ok(mut m) = parse(line, origin) else { continue };
                if origin == Origin::Client && matches!(m.kind, Kind::Request | Kind::Notification) {
                    let gate = engine().check_method(m.method.as_deref().unwrap_or_default());
                    if gate.is_tools_call()
                        && let Some(Ok(params)) = m.params.as_mut().map(|p| p.decode().cloned())
                    {
                        let name = params.get("name").and_then(|n| n.as_str()).unwrap_or("");
                        let v = engine().check_tool_call(name, params.get("arguments"));
                        if let Some(mut args) = params.get("arguments").cloned() {
                            let _ = engine().scan_request(&v, &mut args);
                        }
                        engine().refund(&v);
                    }
                }
            }
        }
        i += 1;
    }
});
