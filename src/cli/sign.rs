//! `aip policy sign|verify|keygen`: Ed25519 policy signatures over the canonical form
//! (docs/identity.md). Owns file handling (atomic in-place rewrite, key files created 0600 and
//! never overwritten by accident) and user messages; the cryptography and the text edit live in
//! `identity`. Must not print private keys.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

use crate::identity::{
    PolicySigningKey, PolicyVerifyingKey, SignatureError, canonical_policy, set_metadata_signature,
    sign_policy, verify_policy_signature,
};
use crate::policy;

/// `aip policy sign --key KEY FILE`
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Ed25519 private key, PEM PKCS#8 ("PRIVATE KEY"), e.g. from `aip policy keygen`.
    #[arg(long, value_name = "KEY")]
    pub key: PathBuf,
    /// Write the signed policy here instead of rewriting FILE in place (`-` for stdout).
    #[arg(long, short = 'o', value_name = "OUT")]
    pub output: Option<PathBuf>,
    /// The policy file (YAML). Only `metadata.signature` is added or replaced; comments and
    /// layout are kept.
    pub file: PathBuf,
}

/// `aip policy verify --pubkey KEY FILE`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Ed25519 public key, PEM SPKI ("PUBLIC KEY"), e.g. the `.pub` file of `aip policy keygen`.
    #[arg(long, value_name = "KEY")]
    pub pubkey: PathBuf,
    /// The signed policy file.
    pub file: PathBuf,
}

/// `aip policy keygen [PREFIX]`
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Writes PREFIX.key (private, mode 0600) and PREFIX.pub (public).
    #[arg(default_value = "aip-policy")]
    pub prefix: PathBuf,
    /// Replace existing key files.
    #[arg(long)]
    pub force: bool,
}

/// Largest policy file read (the loader's bound).
const MAX_POLICY_BYTES: u64 = policy::MAX_POLICY_BYTES as u64;

pub fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let key = PolicySigningKey::from_file(&args.key)?;
    let text = read_policy(&args.file)?;
    check_loads(&text, &args.file)?;
    let document = parse_document(&text, &args.file)?;
    let signature = sign_policy(&document, &key)?;
    let signed_text = set_metadata_signature(&text, &signature)
        .with_context(|| format!("cannot add metadata.signature to {}", args.file.display()))?;

    // Prove the text edit changed nothing but the signature before anything is written.
    let signed_doc = parse_document(&signed_text, &args.file)
        .context("internal error: the signed text no longer parses; file left unchanged")?;
    if canonical_policy(&signed_doc)? != canonical_policy(&document)?
        || signed_doc["metadata"]["signature"].as_str() != Some(signature.as_str())
    {
        bail!(
            "internal error: adding the signature line changed other content of {}; file left unchanged \
             (please report this with the policy's layout)",
            args.file.display()
        );
    }
    verify_policy_signature(&signed_doc, &key.public())
        .context("internal error: fresh signature does not verify; file left unchanged")?;

    match args.output.as_deref() {
        Some(p) if p == Path::new("-") => {
            std::io::stdout().write_all(signed_text.as_bytes())?;
        }
        Some(p) => write_atomic(p, signed_text.as_bytes(), None)?,
        None => {
            let mode = std::fs::metadata(&args.file)?.permissions().mode() & 0o7777;
            write_atomic(&args.file, signed_text.as_bytes(), Some(mode))?;
        }
    }
    say(&format!(
        "signed {} with {}",
        args.output.as_deref().unwrap_or(&args.file).display(),
        key.public().key_id()
    ));
    Ok(ExitCode::SUCCESS)
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let key = PolicyVerifyingKey::from_file(&args.pubkey)?;
    let text = read_policy(&args.file)?;
    let document = parse_document(&text, &args.file)?;
    match verify_policy_signature(&document, &key) {
        Ok(()) => {
            say(&format!(
                "{}: signature OK ({})",
                args.file.display(),
                key.key_id()
            ));
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (SignatureError::KeyFile { .. } | SignatureError::Canonical(_))) => Err(e.into()),
        Err(e) => {
            let hint = match &e {
                SignatureError::Unsigned => "sign it with `aip policy sign --key KEY FILE`",
                SignatureError::Invalid { .. } => {
                    "the policy changed after signing, or it was signed with another key"
                }
                _ => "re-sign the policy with `aip policy sign`",
            };
            #[allow(clippy::print_stderr)]
            {
                eprintln!("aip: {}: {e}\n  hint: {hint}", args.file.display());
            }
            Ok(ExitCode::from(1))
        }
    }
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let private_path = with_suffix(&args.prefix, "key");
    let public_path = with_suffix(&args.prefix, "pub");
    let key = PolicySigningKey::generate()?;
    let private_pem = key.to_pem()?;
    let public_pem = key.public().to_pem()?;
    write_new(&private_path, private_pem.as_bytes(), 0o600, args.force)?;
    write_new(&public_path, public_pem.as_bytes(), 0o644, args.force)?;
    say(&format!(
        "wrote {} (private, 0600) and {} (public); key id {}",
        private_path.display(),
        public_path.display(),
        key.public().key_id()
    ));
    Ok(ExitCode::SUCCESS)
}

fn say(msg: &str) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("{msg}");
    }
}

fn with_suffix(prefix: &Path, ext: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn read_policy(path: &Path) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_POLICY_BYTES {
        bail!(
            "{} is larger than {MAX_POLICY_BYTES} bytes; not a policy",
            path.display()
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {} as UTF-8 text", path.display()))
}

/// The policy document exactly as the loader sees it (`policy::yaml`, YAML 1.2 core schema →
/// JSON): the same value the loader hashes and verifies, so a signature made here verifies
/// there.
fn parse_document(text: &str, path: &Path) -> anyhow::Result<Value> {
    let node = policy::yaml::parse(text).map_err(|e| match e.pos {
        Some(p) => anyhow::anyhow!("{}:{}:{}: {}", path.display(), p.line, p.column, e.message),
        None => anyhow::anyhow!("{}: {}", path.display(), e.message),
    })?;
    let doc = node.to_json();
    if !doc.get("metadata").is_some_and(Value::is_object) {
        bail!(
            "{}: no `metadata` mapping; is this an AIP policy?",
            path.display()
        );
    }
    Ok(doc)
}

/// Refuses to sign a policy the loader would refuse anyway (the error names line and field).
fn check_loads(text: &str, path: &Path) -> anyhow::Result<()> {
    policy::load_str(text, &path.display().to_string())
        .map(|_| ())
        .map_err(|e| {
            anyhow::anyhow!("{e}\n  hint: fix the policy before signing it (`aip policy check`)")
        })
}

/// Writes via a temporary file in the same directory and a rename, so readers see the old or
/// the new policy, never half of one.
fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().context("output path has no file name")?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".aip-sign-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| -> anyhow::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode.unwrap_or(0o644))
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        if let Some(m) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(m))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn write_new(path: &Path, bytes: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    if force {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot replace {}", path.display())),
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| {
            format!(
                "cannot create {} (use --force to replace an existing key)",
                path.display()
            )
        })?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
