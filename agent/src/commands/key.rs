//! `podvault key`: list, add, remove and change passwords. Only key files change; the master
//! key — and so every pack, index and snapshot — stays as it is.

use std::path::PathBuf;

use crate::cli::{Cli, EXIT_OK};
use crate::crypto::KdfCost;
use crate::error::{Error, Result};
use crate::repository::Repository;

/// `podvault key` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: KeyAction,
}

/// Key operations.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeyAction {
    /// List key files.
    List,
    /// Add a key with a new password.
    Add(NewPassword),
    /// Remove a key (never the last one, nor the one in use).
    Remove {
        /// Key id or unique prefix.
        id: String,
    },
    /// Change the password: adds a key for the new password, then removes the current one.
    Passwd(NewPassword),
}

/// Where the new password comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct NewPassword {
    /// File holding the new password (else $PODVAULT_NEW_PASSWORD, else a prompt).
    #[arg(long, env = "PODVAULT_NEW_PASSWORD_FILE", value_name = "FILE")]
    pub new_password_file: Option<PathBuf>,
    /// Argon2id memory for the new key, KiB.
    #[arg(long, default_value_t = KdfCost::default().memory_kib)]
    pub kdf_memory_kib: u32,
    /// Argon2id passes for the new key.
    #[arg(long, default_value_t = KdfCost::default().iterations)]
    pub kdf_iterations: u32,
}

impl NewPassword {
    fn read(&self) -> Result<Vec<u8>> {
        if let Some(file) = &self.new_password_file {
            let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
            return Ok(text.trim_end_matches(['\n', '\r']).as_bytes().to_vec());
        }
        if let Ok(p) = std::env::var("PODVAULT_NEW_PASSWORD") {
            return Ok(p.into_bytes());
        }
        let p =
            rpassword::prompt_password("new password: ").map_err(|e| Error::io("<terminal>", e))?;
        let again = rpassword::prompt_password("repeat new password: ")
            .map_err(|e| Error::io("<terminal>", e))?;
        if again != p {
            return Err(Error::InvalidInput("the passwords do not match".into()));
        }
        Ok(p.into_bytes())
    }

    fn cost(&self) -> KdfCost {
        KdfCost {
            memory_kib: self.kdf_memory_kib,
            iterations: self.kdf_iterations,
            parallelism: 1,
        }
    }
}

/// Runs `key`.
pub fn run(cli: &Cli, a: &KeyArgs) -> Result<u8> {
    let repo = Repository::open(&cli.location()?, &cli.password(false)?)?;
    match &a.action {
        KeyAction::List => {
            let keys = repo.keys()?;
            if cli.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|(id, k)| {
                        serde_json::json!({
                            "id": id.to_hex(),
                            "current": repo.key_id() == Some(*id),
                            "created": k.created,
                            "hostname": k.hostname,
                            "kdf": k.kdf.algorithm,
                            "memory_kib": k.kdf.memory_kib,
                            "iterations": k.kdf.iterations,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (id, k) in &keys {
                    let mark = if repo.key_id() == Some(*id) { "*" } else { " " };
                    println!(
                        "{mark} {}  {}  {}  {} {} KiB × {}",
                        id.short(),
                        k.created,
                        k.hostname,
                        k.kdf.algorithm,
                        k.kdf.memory_kib,
                        k.kdf.iterations
                    );
                }
            }
        }
        KeyAction::Add(p) => {
            let id = repo.add_key(&p.read()?, p.cost())?;
            report(cli, "added", &id);
        }
        KeyAction::Remove { id } => {
            let id = resolve(&repo, id)?;
            repo.remove_key(&id, false)?;
            report(cli, "removed", &id);
        }
        KeyAction::Passwd(p) => {
            let old = repo.key_id().ok_or_else(|| {
                Error::InvalidInput("cannot tell which key opened the repository".into())
            })?;
            let new = repo.add_key(&p.read()?, p.cost())?;
            // The new key is durable before the old one goes: a crash in between leaves
            // both passwords working, never neither.
            repo.remove_key(&old, true)?;
            report(cli, "added", &new);
            report(cli, "removed", &old);
        }
    }
    Ok(EXIT_OK)
}

fn report(cli: &Cli, what: &str, id: &podvault_proto::KeyId) {
    if cli.json {
        println!("{}", serde_json::json!({ what: id.to_hex() }));
    } else {
        println!("{what} key {}", id.short());
    }
}

fn resolve(repo: &Repository, spec: &str) -> Result<podvault_proto::KeyId> {
    let spec = spec.to_ascii_lowercase();
    let found: Vec<_> = repo
        .list::<podvault_proto::key::KeyFile>()?
        .into_iter()
        .filter(|id| !spec.is_empty() && id.to_hex().starts_with(&spec))
        .collect();
    match found.as_slice() {
        [id] => Ok(*id),
        [] => Err(Error::InvalidInput(format!("no key matches {spec:?}"))),
        _ => Err(Error::InvalidInput(format!(
            "key prefix {spec:?} matches several keys; give more digits"
        ))),
    }
}
