//! `aip daemon` (aipd), `aip connect` (the client shim), and the control commands `aip ps`,
//! `aip approve` and `aip reload`. Flags and printing only; the work is in `crate::daemon`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};

use crate::daemon::config::{DEFAULT_CONFIG, DEFAULT_CONTROL_SOCKET, DEFAULT_SOCKET};
use crate::daemon::control::{self, Request};
use crate::daemon::{self, client, hello};

/// `aip daemon [--config FILE] [--check]`
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// aipd's configuration; server definitions are read from `servers_dir` (default: the
    /// `servers.d` directory next to it).
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG, env = "AIP_DAEMON_CONFIG")]
    pub config: PathBuf,
    /// Check the configuration and every server file, print what is wrong, and exit (1 when
    /// anything is).
    #[arg(long)]
    pub check: bool,
}

/// `aip connect NAME [--socket PATH]`
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The server's name in aipd's servers.d.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// aipd's socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET, env = "AIP_SOCKET")]
    pub socket: PathBuf,
}

/// Where the control commands reach aipd.
#[derive(Debug, Args, Clone)]
pub struct ControlArgs {
    /// aipd's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET, env = "AIP_CONTROL_SOCKET")]
    pub control: PathBuf,
    /// Print the daemon's JSON answer.
    #[arg(long)]
    pub json: bool,
}

/// `aip ps`
#[derive(Debug, Args)]
pub struct PsArgs {
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `aip approve [ID [--deny] [--reason TEXT]]`
#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The pending approval to answer; without it, list the pending approvals.
    #[arg(value_name = "ID")]
    pub id: Option<u64>,
    /// Deny instead of approving.
    #[arg(long, requires = "id")]
    pub deny: bool,
    /// Reason recorded with the answer (and shown to the agent on a denial).
    #[arg(long, value_name = "TEXT", requires = "id")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub control: ControlArgs,
}

/// `aip reload`
#[derive(Debug, Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    pub control: ControlArgs,
}

fn init_tracing(default: &str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Under systemd, logs go to journald as structured entries; elsewhere to stderr.
    if std::env::var_os("JOURNAL_STREAM").is_some()
        && let Ok(layer) = tracing_journald::layer()
    {
        let layer = layer.with_syslog_identifier("aipd".into());
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

#[allow(clippy::print_stdout, clippy::print_stderr)]
pub fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    if args.check {
        init_tracing("warn");
        let report = daemon::check(&args.config);
        let mut bad = false;
        match &report.daemon {
            Ok(d) => println!(
                "{}: ok (servers in {})",
                args.config.display(),
                d.servers_dir.display()
            ),
            Err(p) => {
                eprintln!("{p}");
                bad = true;
            }
        }
        for p in &report.servers.problems {
            eprintln!("{p}");
            bad = true;
        }
        for (name, def) in &report.servers.by_name {
            println!(
                "server {name}: ok ({}, policy {})",
                def.file.display(),
                def.policy.name()
            );
        }
        return Ok(if bad {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    init_tracing("info");
    daemon::run(&daemon::Options {
        config: args.config.clone(),
    })
    .with_context(|| format!("aipd ({})", args.config.display()))?;
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::print_stderr)]
pub fn connect(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let (code, message, data) = match client::connect(&args.socket, &args.name) {
        Ok(client::Connected::Welcome { stream, early, .. }) => {
            client::bridge(stream, &early).context("aip connect")?;
            return Ok(ExitCode::SUCCESS);
        }
        Ok(client::Connected::Refused {
            code,
            reason,
            message,
        }) => {
            eprintln!("aip connect: aipd refused the session: {message}");
            (code, message, json!({"reason": reason.as_str()}))
        }
        Err(e) => {
            eprintln!(
                "aip connect: {e}\n  hint: is aipd running? (systemctl status aipd.socket aipd.service; --socket or AIP_SOCKET for another path)"
            );
            (
                crate::jsonrpc::codes::INTERNAL_ERROR,
                format!("aipd is not reachable: {e}"),
                json!({"reason": "unreachable"}),
            )
        }
    };
    // The MCP client sees the reason as the error of each request it sends.
    let mut out = std::io::stdout().lock();
    hello::answer_with_error(
        std::io::stdin().lock(),
        &mut out,
        code,
        &message,
        Some(data),
        4 * 1024 * 1024,
        0,
    );
    Ok(ExitCode::from(1))
}

fn ask(args: &ControlArgs, req: &Request) -> anyhow::Result<Value> {
    control::request(&args.control, req).map_err(|e| {
        let hint = match &e {
            control::ControlError::Connect { .. } => {
                "\n  hint: is aipd running, and are you root or an aipd administrator? (--control or AIP_CONTROL_SOCKET for another path)"
            }
            _ => "",
        };
        anyhow::anyhow!("{e}{hint}")
    })
}

#[allow(clippy::print_stdout)]
fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `8/8 enforced` or `7/8 (landlock partial)`.
fn layers(v: &Value) -> String {
    let Some(obj) = v.as_object() else {
        return "starting".into();
    };
    if obj.get("sandbox").and_then(Value::as_str) == Some("disabled") {
        return "SANDBOX DISABLED".into();
    }
    let enforced = obj
        .values()
        .filter(|s| s.as_str() == Some("enforced"))
        .count();
    let others: Vec<String> = obj
        .iter()
        .filter(|(_, s)| s.as_str() != Some("enforced"))
        .map(|(k, s)| format!("{k} {}", s.as_str().unwrap_or("?")))
        .collect();
    if others.is_empty() {
        format!("{enforced}/{} enforced", obj.len())
    } else {
        format!("{enforced}/{} ({})", obj.len(), others.join(", "))
    }
}

fn who(v: &Value) -> String {
    match (v["user"].as_str(), v["uid"].as_u64()) {
        (Some(u), Some(id)) => format!("{u}({id})"),
        (None, Some(id)) => id.to_string(),
        _ => "?".into(),
    }
}

fn table(rows: Vec<Vec<String>>) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn write_out(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("write to stdout"),
    }
}

pub fn ps(args: PsArgs) -> anyhow::Result<ExitCode> {
    let v = ask(&args.control, &Request::Ps {})?;
    if args.control.json {
        print_json(&v["sessions"]);
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows = vec![
        [
            "SESSION",
            "SERVER",
            "USER",
            "PID",
            "UPTIME",
            "SESSION-UID",
            "LAYERS",
            "POLICY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in v["sessions"].as_array().into_iter().flatten() {
        rows.push(vec![
            s["session"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(8)
                .collect(),
            s["server"].as_str().unwrap_or("").into(),
            who(s),
            s["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            uptime(s["uptime_secs"].as_u64().unwrap_or(0)),
            s["session_uid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            layers(&s["layers"]),
            s["policy"].as_str().unwrap_or("").into(),
        ]);
    }
    write_out(&table(rows))?;
    Ok(ExitCode::SUCCESS)
}

pub fn approve(args: ApproveArgs) -> anyhow::Result<ExitCode> {
    let Some(id) = args.id else {
        let v = ask(&args.control, &Request::Approvals {})?;
        if args.control.json {
            print_json(&v["approvals"]);
            return Ok(ExitCode::SUCCESS);
        }
        let mut rows = vec![
            [
                "ID",
                "SERVER",
                "USER",
                "TOOL",
                "WAITING",
                "EXPIRES",
                "ARGUMENTS",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for a in v["approvals"].as_array().into_iter().flatten() {
            rows.push(vec![
                a["id"].to_string(),
                a["server"].as_str().unwrap_or("").into(),
                who(a),
                a["tool"].as_str().unwrap_or("").into(),
                uptime(a["waiting_secs"].as_u64().unwrap_or(0)),
                format!("in {}", uptime(a["expires_in_secs"].as_u64().unwrap_or(0))),
                a["args_preview"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(80)
                    .collect(),
            ]);
        }
        write_out(&table(rows))?;
        return Ok(ExitCode::SUCCESS);
    };
    let v = ask(
        &args.control,
        &Request::Answer {
            id,
            approve: !args.deny,
            reason: args.reason.clone(),
        },
    )?;
    if args.control.json {
        print_json(&v["answered"]);
    } else {
        let a = &v["answered"];
        write_out(&format!(
            "{} {} (tool {} of {} on {})\n",
            if args.deny { "denied" } else { "approved" },
            id,
            a["tool"].as_str().unwrap_or("?"),
            who(a),
            a["server"].as_str().unwrap_or("?"),
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn reload(args: ReloadArgs) -> anyhow::Result<ExitCode> {
    let v = ask(&args.control, &Request::Reload {})?;
    let r = &v["reload"];
    if args.control.json {
        print_json(r);
    } else {
        let mut text = format!(
            "reload {}: {} servers ({})\n",
            r["status"].as_str().unwrap_or("?"),
            r["servers"].as_array().map_or(0, Vec::len),
            r["servers"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
        for p in r["problems"].as_array().into_iter().flatten() {
            text.push_str(&format!("{}\n", p.as_str().unwrap_or("")));
        }
        for k in r["kept"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "server {} keeps its previous definition\n",
                k.as_str().unwrap_or("")
            ));
        }
        for k in r["restart_needed"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "{} changed: restart aipd to apply\n",
                k.as_str().unwrap_or("")
            ));
        }
        write_out(&text)?;
    }
    Ok(ExitCode::from(if r["status"] == "failed" { 1 } else { 0 }))
}
