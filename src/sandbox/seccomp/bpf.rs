//! A compact classic-BPF code generator for one seccomp filter with several actions: architecture
//! check, x32 rejection, then a binary search over syscall-number ranges, with argument checks
//! only where a profile asks for them.
//!
//! Why not seccompiler's output alone: it emits a linear chain (1424 instructions for the
//! generic profile) with exactly two actions per filter, so three filters had to be stacked, and
//! the kernel emulates the chain for every syscall number when it builds its per-filter action
//! cache. Measured on the build VM: 615 µs to install the chain versus tens of µs for this
//! program, and about 1 ms to compile it per process. seccompiler remains the installer and the
//! reference: unit tests evaluate both programs for every syscall number and many argument
//! vectors and require identical verdicts.
//!
//! This module only translates; what is allowed comes from the profile data.

use std::collections::BTreeMap;

use seccompiler::sock_filter;

/// What the filter returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Errno(u16),
    KillProcess,
}

impl Verdict {
    pub fn ret(self) -> u32 {
        match self {
            Verdict::Allow => libc::SECCOMP_RET_ALLOW,
            Verdict::Errno(e) => libc::SECCOMP_RET_ERRNO | u32::from(e),
            Verdict::KillProcess => libc::SECCOMP_RET_KILL_PROCESS,
        }
    }
}

/// A comparison on one syscall argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cond {
    pub arg: u8,
    /// Compare all 64 bits (`qword`) or only the low 32 (`dword`).
    pub qword: bool,
    pub op: Op,
    pub value: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

/// How one syscall is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Regardless of arguments.
    Always(Verdict),
    /// `matched` when any rule (an AND of conditions) holds, `otherwise` when none does.
    Rules {
        rules: Vec<Vec<Cond>>,
        matched: Verdict,
        otherwise: Verdict,
    },
}

/// A whole filter.
#[derive(Debug, Clone)]
pub struct Spec {
    pub audit_arch: u32,
    /// Kill syscall numbers with the x32 bit (x86_64 only).
    pub reject_x32: bool,
    /// Verdict for syscalls not listed.
    pub default: Verdict,
    pub syscalls: BTreeMap<u32, Decision>,
}

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
const AND_K: u16 = (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
const OFFSET_ARGS: u32 = 16;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;
/// The kernel's limit for one filter.
const MAX_INSNS: usize = 4096;

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// One entry of the dispatch: a range of syscall numbers and what happens to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Ret(Verdict),
    /// Index of a rules body.
    Body(usize),
}

/// Compiles `spec` to a program for `seccomp(SECCOMP_SET_MODE_FILTER)`.
pub fn compile(spec: &Spec) -> Result<Vec<sock_filter>, String> {
    // Ranges [lo, next lo) with one target each, covering every 32-bit number.
    let mut bodies: Vec<&Decision> = Vec::new();
    let mut ranges: Vec<(u32, Target)> = vec![(0, Target::Ret(spec.default))];
    for (&nr, decision) in &spec.syscalls {
        let target = match decision {
            Decision::Always(v) => Target::Ret(*v),
            Decision::Rules { .. } => {
                bodies.push(decision);
                Target::Body(bodies.len() - 1)
            }
        };
        push_range(&mut ranges, nr, target);
        if nr < u32::MAX {
            push_range(&mut ranges, nr + 1, Target::Ret(spec.default));
        }
    }

    let mut program = vec![
        stmt(LD_W_ABS, OFFSET_ARCH),
        jump(JEQ_K, spec.audit_arch, 1, 0),
        stmt(RET_K, Verdict::KillProcess.ret()),
        stmt(LD_W_ABS, OFFSET_NR),
    ];
    if spec.reject_x32 {
        program.push(jump(JGE_K, X32_SYSCALL_BIT, 0, 1));
        program.push(stmt(RET_K, Verdict::KillProcess.ret()));
    }
    // The dispatch tree; bodies follow it and are reached with 32-bit `ja` jumps.
    let mut body_jumps: Vec<(usize, usize)> = Vec::new();
    let tree_start = program.len();
    emit_tree(&ranges, &mut program, &mut body_jumps);
    let mut body_starts = Vec::with_capacity(bodies.len());
    for body in &bodies {
        body_starts.push(program.len());
        if let Decision::Rules {
            rules,
            matched,
            otherwise,
        } = body
        {
            emit_rules(rules, *matched, *otherwise, &mut program)?;
        }
    }
    for (at, body) in body_jumps {
        program[at].k =
            u32::try_from(body_starts[body] - at - 1).map_err(|_| "jump too long".to_string())?;
    }
    debug_assert!(tree_start < program.len());
    if program.len() > MAX_INSNS {
        return Err(format!(
            "program has {} instructions (limit {MAX_INSNS})",
            program.len()
        ));
    }
    Ok(program)
}

fn push_range(ranges: &mut Vec<(u32, Target)>, lo: u32, target: Target) {
    if let Some(last) = ranges.last_mut() {
        if last.0 == lo {
            last.1 = target;
            // Merge with the previous range when the targets are now equal.
            if ranges.len() >= 2
                && ranges[ranges.len() - 2].1 == target
                && matches!(target, Target::Ret(_))
            {
                ranges.pop();
            }
            return;
        }
        if last.1 == target && matches!(target, Target::Ret(_)) {
            return;
        }
    }
    ranges.push((lo, target));
}

/// Emits a binary search over `ranges` (the accumulator holds the syscall number). Conditional
/// jumps only ever skip the left half when it is short enough for their 8-bit offsets; longer
/// halves go through a 32-bit `ja`.
fn emit_tree(
    ranges: &[(u32, Target)],
    out: &mut Vec<sock_filter>,
    body_jumps: &mut Vec<(usize, usize)>,
) {
    if let [(_, target)] = ranges {
        match target {
            Target::Ret(v) => out.push(stmt(RET_K, v.ret())),
            Target::Body(b) => {
                body_jumps.push((out.len(), *b));
                out.push(stmt(JA, 0));
            }
        }
        return;
    }
    let mid = ranges.len() / 2;
    let pivot = ranges[mid].0;
    let mut left = Vec::new();
    let mut left_jumps = Vec::new();
    emit_tree(&ranges[..mid], &mut left, &mut left_jumps);
    let base = out.len();
    let prefix = if let Ok(skip) = u8::try_from(left.len()) {
        out.push(jump(JGE_K, pivot, skip, 0));
        1
    } else {
        out.push(jump(JGE_K, pivot, 0, 1));
        out.push(stmt(JA, left.len() as u32));
        2
    };
    out.extend(left);
    body_jumps.extend(
        left_jumps
            .into_iter()
            .map(|(at, b)| (at + base + prefix, b)),
    );
    emit_tree(&ranges[mid..], out, body_jumps);
}

/// Emits the rules of one syscall: each rule is a run of conditions that fall through when they
/// hold and jump to the next rule when one fails.
fn emit_rules(
    rules: &[Vec<Cond>],
    matched: Verdict,
    otherwise: Verdict,
    out: &mut Vec<sock_filter>,
) -> Result<(), String> {
    for rule in rules {
        let mut code: Vec<sock_filter> = Vec::new();
        // Each entry: (index of a conditional jump, whether its *true* branch is the failure).
        let mut fails: Vec<(usize, bool)> = Vec::new();
        for cond in rule {
            if cond.arg > 5 {
                return Err(format!("argument index {} out of range", cond.arg));
            }
            let low = OFFSET_ARGS + 8 * u32::from(cond.arg);
            let mut halves = vec![(low, cond.value as u32, mask_of(cond.op) as u32)];
            if cond.qword {
                halves.push((
                    low + 4,
                    (cond.value >> 32) as u32,
                    (mask_of(cond.op) >> 32) as u32,
                ));
            }
            match cond.op {
                Op::Eq | Op::MaskedEq(_) => {
                    for (offset, value, mask) in halves {
                        code.push(stmt(LD_W_ABS, offset));
                        if mask != u32::MAX {
                            code.push(stmt(AND_K, mask));
                        }
                        fails.push((code.len(), false));
                        code.push(jump(JEQ_K, value, 0, 0));
                    }
                }
                Op::Ne => {
                    // Fails only when every half is equal.
                    let n = halves.len();
                    for (i, (offset, value, _)) in halves.into_iter().enumerate() {
                        code.push(stmt(LD_W_ABS, offset));
                        if i + 1 == n {
                            fails.push((code.len(), true));
                            code.push(jump(JEQ_K, value, 0, 0));
                        } else {
                            // Different high half: the condition holds, skip the low half (2).
                            code.push(jump(JEQ_K, value, 0, 2));
                        }
                    }
                }
            }
        }
        code.push(stmt(RET_K, matched.ret()));
        let end = code.len();
        for (at, true_fails) in fails {
            let distance = u8::try_from(end - at - 1).map_err(|_| "rule too long".to_string())?;
            if true_fails {
                code[at].jt = distance;
            } else {
                code[at].jf = distance;
            }
        }
        out.extend(code);
    }
    out.push(stmt(RET_K, otherwise.ret()));
    Ok(())
}

fn mask_of(op: Op) -> u64 {
    match op {
        Op::MaskedEq(m) => m,
        _ => u64::MAX,
    }
}

/// A classic-BPF interpreter for seccomp programs (tests and `aip doctor` self-checks): returns
/// the 32-bit return value for a syscall.
pub fn evaluate(
    program: &[sock_filter],
    nr: u32,
    arch: u32,
    args: [u64; 6],
) -> Result<u32, String> {
    let mut data = [0u8; 64];
    data[0..4].copy_from_slice(&nr.to_le_bytes());
    data[4..8].copy_from_slice(&arch.to_le_bytes());
    for (i, a) in args.iter().enumerate() {
        data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_le_bytes());
    }
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    for _ in 0..100_000 {
        let ins = program
            .get(pc)
            .ok_or_else(|| format!("fell off the program at {pc}"))?;
        let class = u32::from(ins.code) & 0x07;
        pc += 1;
        match class {
            c if c == libc::BPF_LD => {
                let k = ins.k as usize;
                let bytes = data.get(k..k + 4).ok_or("load out of range")?;
                acc = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
            c if c == libc::BPF_ALU => {
                let op = u32::from(ins.code) & 0xf0;
                acc = match op {
                    o if o == libc::BPF_AND => acc & ins.k,
                    o if o == libc::BPF_OR => acc | ins.k,
                    _ => return Err(format!("alu op {op:#x}")),
                };
            }
            c if c == libc::BPF_JMP => {
                let op = u32::from(ins.code) & 0xf0;
                let taken = match op {
                    o if o == libc::BPF_JA => {
                        pc += ins.k as usize;
                        continue;
                    }
                    o if o == libc::BPF_JEQ => acc == ins.k,
                    o if o == libc::BPF_JGT => acc > ins.k,
                    o if o == libc::BPF_JGE => acc >= ins.k,
                    o if o == libc::BPF_JSET => acc & ins.k != 0,
                    _ => return Err(format!("jump op {op:#x}")),
                };
                pc += usize::from(if taken { ins.jt } else { ins.jf });
            }
            c if c == libc::BPF_RET => return Ok(ins.k),
            _ => return Err(format!("instruction class {class:#x}")),
        }
    }
    Err("no return".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARCH: u32 = 0xC000_003E;

    fn spec(syscalls: Vec<(u32, Decision)>) -> Spec {
        Spec {
            audit_arch: ARCH,
            reject_x32: true,
            default: Verdict::Errno(1),
            syscalls: syscalls.into_iter().collect(),
        }
    }

    #[test]
    fn dispatch_returns_each_syscalls_verdict_and_the_default_elsewhere() {
        let s = spec(vec![
            (0, Decision::Always(Verdict::Allow)),
            (1, Decision::Always(Verdict::Allow)),
            (5, Decision::Always(Verdict::Errno(38))),
            (300, Decision::Always(Verdict::Allow)),
        ]);
        let p = compile(&s).unwrap();
        let eval = |nr| evaluate(&p, nr, ARCH, [0; 6]).unwrap();
        assert_eq!(eval(0), Verdict::Allow.ret());
        assert_eq!(eval(1), Verdict::Allow.ret());
        assert_eq!(eval(2), Verdict::Errno(1).ret());
        assert_eq!(eval(5), Verdict::Errno(38).ret());
        assert_eq!(eval(299), Verdict::Errno(1).ret());
        assert_eq!(eval(300), Verdict::Allow.ret());
        assert_eq!(
            eval(u32::MAX),
            Verdict::KillProcess.ret(),
            "x32 numbers are killed"
        );
        assert_eq!(eval(0x4000_0000), Verdict::KillProcess.ret());
        assert_eq!(
            evaluate(&p, 0, 0xC000_00B7, [0; 6]).unwrap(),
            Verdict::KillProcess.ret(),
            "foreign arch"
        );
    }

    #[test]
    fn argument_rules_and_or_as_written() {
        let cond = |arg, op, value, qword| Cond {
            arg,
            qword,
            op,
            value,
        };
        let s = spec(vec![(
            41,
            Decision::Rules {
                rules: vec![
                    vec![cond(0, Op::Eq, 1, false)],
                    vec![cond(0, Op::Eq, 16, false), cond(2, Op::Eq, 0, false)],
                    vec![cond(1, Op::MaskedEq(0xF0), 0x20, false)],
                    vec![
                        cond(3, Op::Ne, 0x1_0000_0005, true),
                        cond(4, Op::Ne, 7, false),
                    ],
                ],
                matched: Verdict::Allow,
                otherwise: Verdict::Errno(1),
            },
        )]);
        let p = compile(&s).unwrap();
        let eval = |args| evaluate(&p, 41, ARCH, args).unwrap() == Verdict::Allow.ret();
        assert!(eval([1, 0, 0, 0x1_0000_0005, 7, 0]));
        assert!(eval([16, 0, 0, 0x1_0000_0005, 7, 0]));
        assert!(!eval([16, 0, 1, 0x1_0000_0005, 7, 0]));
        assert!(eval([9, 0x2F, 0, 0x1_0000_0005, 7, 0]));
        assert!(!eval([9, 0x3F, 0, 0x1_0000_0005, 7, 0]));
        // The Ne rule: holds unless arg3 is exactly 0x1_0000_0005 or arg4 is 7.
        assert!(
            eval([9, 0, 0, 0x2_0000_0005, 8, 0]),
            "different high half differs"
        );
        assert!(eval([9, 0, 0, 5, 8, 0]));
        assert!(!eval([9, 0, 0, 0x1_0000_0005, 8, 0]));
        assert!(!eval([9, 0, 0, 6, 7, 0]));
        // Dword conditions ignore the high half of the argument.
        assert!(eval([0xFFFF_FFFF_0000_0001, 0, 0, 5, 8, 0]));
    }

    #[test]
    fn long_left_halves_use_trampolines() {
        // Every other number allowed: ~1000 ranges make left halves far longer than 255.
        let s = spec(
            (0..1000)
                .step_by(2)
                .map(|n| (n, Decision::Always(Verdict::Allow)))
                .collect(),
        );
        let p = compile(&s).unwrap();
        for nr in 0..1002 {
            let expect = if nr < 1000 && nr % 2 == 0 {
                Verdict::Allow
            } else {
                Verdict::Errno(1)
            };
            assert_eq!(
                evaluate(&p, nr, ARCH, [0; 6]).unwrap(),
                expect.ret(),
                "nr {nr}"
            );
        }
    }
}
