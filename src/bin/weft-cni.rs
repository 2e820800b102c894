//! `weft-cni`: the CNI plugin. A container runtime runs it with `CNI_*` environment variables and the network
//! configuration on stdin; it asks the local weft daemon (its JSON API socket) to attach or detach the container's
//! namespace and prints the CNI result, or a CNI error and exits 1. The protocol is in `weft::cni`; docs/cni.md
//! has the user's view.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{json, Value};
use weft::cli::{call, RequestError};
use weft::cni::{self, code, CniError, Command, Env, NetConf};
use weft::services::attach::Attachment;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let mut version = cni::LATEST_VERSION.to_string();
    let outcome = std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot read stdin").with_details(e.to_string()))
        .and_then(|_| run(&stdin, &mut version));
    let (document, status) = match outcome {
        Ok(document) => (document, ExitCode::SUCCESS),
        Err(e) => (Some(e.to_json(&version)), ExitCode::FAILURE),
    };
    if let Some(document) = document {
        let mut out = std::io::stdout().lock();
        let written = serde_json::to_writer(&mut out, &document).is_ok() && writeln!(out).is_ok();
        if !written {
            return ExitCode::FAILURE;
        }
    }
    status
}

/// One invocation: what to print on success (DEL, CHECK and GC print nothing).
fn run(stdin: &[u8], version: &mut String) -> Result<Option<Value>, CniError> {
    let env = Env::parse(|name| std::env::var(name).ok())?;
    if env.command == Command::Version {
        return Ok(Some(cni::version_result(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    version.clone_from(&conf.cni_version);
    // Env::parse made sure the command's variables are there.
    let id = env.container_id.as_deref().unwrap_or_default();
    match env.command {
        Command::Add => {
            let answer =
                call(&conf.socket, "attach", cni::attach_params(&env, &conf)).map_err(|e| daemon_error(e, "attach"))?;
            let attachment = attachment(answer)?;
            Ok(Some(cni::add_result(&conf, &attachment)))
        }
        Command::Del => match call(&conf.socket, "detach", cni::detach_params(id, &conf, true)) {
            // No daemon, no attachment: weft detaches everything when it stops, and a namespace that is gone took
            // its veth pair with it. DEL must succeed, or the runtime could never finish deleting the container.
            Ok(_) | Err(RequestError::Unreachable { .. }) => Ok(None),
            Err(e) => Err(daemon_error(e, "detach")),
        },
        Command::Check => {
            let list = call(&conf.socket, "attachments", Value::Null).map_err(|e| daemon_error(e, "attachments"))?;
            let known =
                attachments(&list)?.iter().any(|a| a.network == conf.network && a.container_id.as_deref() == Some(id));
            if !known {
                return Err(CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("container {id} is not attached to weft network {:?} on this host", conf.network),
                ));
            }
            let answer = call(&conf.socket, "check", cni::detach_params(id, &conf, false)).map_err(|e| match e {
                RequestError::Refused(msg) => CniError::new(code::CHECK_FAILED, msg),
                other => daemon_error(other, "check"),
            })?;
            cni::check_attachment(&env, &conf, &attachment(answer)?)?;
            Ok(None)
        }
        Command::Status => {
            let status = call(&conf.socket, "status", Value::Null).map_err(|e| {
                CniError::new(code::PLUGIN_NOT_AVAILABLE, "the weft daemon is not reachable")
                    .with_details(e.to_string())
            })?;
            let networks = status["networks"].as_array().map(Vec::as_slice).unwrap_or_default();
            if !networks.iter().any(|n| n["name"] == json!(conf.network)) {
                return Err(CniError::new(
                    code::PLUGIN_NOT_AVAILABLE,
                    format!("the weft daemon at {} has no network {:?}", conf.socket.display(), conf.network),
                ));
            }
            Ok(None)
        }
        Command::Gc => {
            let list = match call(&conf.socket, "attachments", Value::Null) {
                Err(RequestError::Unreachable { .. }) => return Ok(None), // nothing is attached without a daemon
                other => other.map_err(|e| daemon_error(e, "attachments"))?,
            };
            for stale in cni::stale_attachments(&conf, &attachments(&list)?) {
                call(&conf.socket, "detach", cni::detach_params(&stale, &conf, true))
                    .map_err(|e| daemon_error(e, "detach"))?;
            }
            Ok(None)
        }
        Command::Version => unreachable!("answered above"),
    }
}

/// A failed daemon request as a CNI error: no daemon is "try again later", a refusal carries the daemon's reason.
fn daemon_error(e: RequestError, method: &str) -> CniError {
    let details = e.to_string();
    match e {
        RequestError::Unreachable { .. } => {
            CniError::new(code::TRY_AGAIN_LATER, "the weft daemon is not reachable").with_details(details)
        }
        RequestError::Refused(msg) => CniError::new(code::DAEMON_REFUSED, msg).with_details(format!("weft {method}")),
        RequestError::Exchange { .. } => {
            CniError::new(code::IO_FAILURE, format!("weft {method} broke off")).with_details(details)
        }
    }
}

fn attachment(answer: Value) -> Result<Attachment, CniError> {
    serde_json::from_value(answer).map_err(|e| {
        CniError::new(code::DECODING_FAILURE, "the weft daemon's answer is not an attachment")
            .with_details(e.to_string())
    })
}

/// The `attachments` answer's list.
fn attachments(list: &Value) -> Result<Vec<Attachment>, CniError> {
    serde_json::from_value(list.get("attachments").cloned().unwrap_or(Value::Null)).map_err(|e| {
        CniError::new(code::DECODING_FAILURE, "the weft daemon's attachments are not a list")
            .with_details(e.to_string())
    })
}
