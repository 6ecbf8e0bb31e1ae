//! `podvault snapshots`, `ls` and `diff`.

use podvault_proto::tree::{Node, NodeKind, Tree};
use podvault_proto::TreeId;

use crate::cli::{Cli, EXIT_OK};
use crate::commands::bytes;
use crate::error::{Error, Result};
use crate::index::MasterIndex;
use crate::repository::Repository;

/// `snapshots` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotsArgs {
    /// Only snapshots carrying all of these tags; repeatable.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only snapshots the node agent took of this series (`<namespace>/pvc/<claim>` or
    /// `<namespace>/pod/<pod>/<volume>`), by their recorded identity.
    #[arg(long, value_name = "SERIES")]
    pub series: Option<String>,
}

/// `ls` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LsArgs {
    /// Snapshot id, prefix, or `latest`.
    pub snapshot: String,
    /// Directory inside the snapshot to list (default: everything).
    pub path: Option<String>,
}

/// `diff` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    /// Older snapshot.
    pub a: String,
    /// Newer snapshot.
    pub b: String,
}

fn open(cli: &Cli) -> Result<Repository> {
    cli.open_repo()
}

/// Runs `snapshots`.
pub fn run(cli: &Cli, a: &SnapshotsArgs) -> Result<u8> {
    let repo = open(cli)?;
    let snaps: Vec<_> = repo
        .snapshots()?
        .into_iter()
        .filter(|(_, s)| a.tags.iter().all(|t| s.has_tag(t)))
        .filter(|(_, s)| a.series.as_deref().is_none_or(|k| s.series() == Some(k)))
        .collect();
    if cli.json {
        let v: Vec<_> = snaps
            .iter()
            .map(|(id, s)| {
                serde_json::json!({
                    "id": id.to_hex(), "time": s.time().to_rfc3339(), "hostname": s.hostname,
                    "paths": s.paths, "tags": s.tags, "parent": s.parent.map(|p| p.to_hex()),
                    "tree": s.tree.to_hex(), "summary": s.summary, "identity": s.identity(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(EXIT_OK);
    }
    println!(
        "{:<10} {:<20} {:<16} {:>10}  {:<30} tags",
        "id", "time (UTC)", "host", "size", "series or paths"
    );
    for (id, s) in &snaps {
        println!(
            "{:<10} {:<20} {:<16} {:>10}  {:<30} {}",
            id.short(),
            s.time().format("%Y-%m-%d %H:%M:%S"),
            s.hostname,
            bytes(s.summary.total_bytes),
            s.series().map_or_else(|| s.paths.join(","), str::to_string),
            s.tags.join(",")
        );
    }
    println!("{} snapshot(s)", snaps.len());
    Ok(EXIT_OK)
}

/// Finds the tree of a directory inside a snapshot.
fn subtree(repo: &Repository, index: &MasterIndex, root: TreeId, path: &str) -> Result<TreeId> {
    let mut id = root;
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        let tree = repo.load_tree(index, &id)?;
        let node = tree.find(part.as_bytes()).ok_or_else(|| {
            Error::InvalidInput(format!("{path:?}: no such entry in the snapshot"))
        })?;
        id = match (node.kind, node.subtree) {
            (NodeKind::Dir, Some(s)) => s,
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{path:?} is not a directory in the snapshot"
                )))
            }
        };
    }
    Ok(id)
}

fn kind_char(n: &Node) -> char {
    match n.kind {
        NodeKind::Dir => 'd',
        NodeKind::Symlink => 'l',
        NodeKind::Fifo => 'p',
        NodeKind::Socket => 's',
        NodeKind::CharDevice => 'c',
        NodeKind::BlockDevice => 'b',
        NodeKind::File => '-',
    }
}

/// Runs `ls`.
pub fn ls(cli: &Cli, a: &LsArgs) -> Result<u8> {
    let repo = open(cli)?;
    let (_, snap) = repo.find_snapshot(&a.snapshot)?;
    let index = repo.load_index()?;
    let prefix = a
        .path
        .clone()
        .unwrap_or_default()
        .trim_matches('/')
        .to_owned();
    let start = subtree(&repo, &index, snap.tree, &prefix)?;
    let mut stack = vec![(start, prefix)];
    let mut out = Vec::new();
    while let Some((id, dir)) = stack.pop() {
        let tree = repo.load_tree(&index, &id)?;
        for n in &tree.nodes {
            let path = if dir.is_empty() {
                n.display_name().into_owned()
            } else {
                format!("{dir}/{}", n.display_name())
            };
            if let (NodeKind::Dir, Some(s)) = (n.kind, n.subtree) {
                stack.push((s, path.clone()));
            }
            out.push((path, n.clone()));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, n) in out {
        if cli.json {
            println!(
                "{}",
                serde_json::json!({"path": path, "type": format!("{:?}", n.kind).to_lowercase(), "size": n.size, "mode": n.mode & 0o7777, "mtime_ns": n.mtime_ns})
            );
        } else {
            let mtime =
                chrono::DateTime::from_timestamp_nanos(n.mtime_ns).format("%Y-%m-%d %H:%M:%S");
            let link = if n.kind == NodeKind::Symlink {
                format!(" -> {}", String::from_utf8_lossy(&n.symlink_target))
            } else {
                String::new()
            };
            println!(
                "{}{:04o} {:>12} {mtime} {path}{link}",
                kind_char(&n),
                n.mode & 0o7777,
                n.size
            );
        }
    }
    Ok(EXIT_OK)
}

/// Runs `diff`.
pub fn diff(cli: &Cli, a: &DiffArgs) -> Result<u8> {
    let repo = open(cli)?;
    let index = repo.load_index()?;
    let (_, sa) = repo.find_snapshot(&a.a)?;
    let (_, sb) = repo.find_snapshot(&a.b)?;
    let mut changes = Vec::new();
    diff_trees(
        &repo,
        &index,
        Some(sa.tree),
        Some(sb.tree),
        "",
        &mut changes,
    )?;
    for (c, path) in &changes {
        if cli.json {
            println!(
                "{}",
                serde_json::json!({"change": c.to_string(), "path": path})
            );
        } else {
            println!("{c} {path}");
        }
    }
    if !cli.json {
        let count = |k: char| changes.iter().filter(|(c, _)| *c == k).count();
        println!(
            "{} added, {} removed, {} modified",
            count('+'),
            count('-'),
            count('M')
        );
    }
    Ok(EXIT_OK)
}

fn diff_trees(
    repo: &Repository,
    index: &MasterIndex,
    a: Option<TreeId>,
    b: Option<TreeId>,
    dir: &str,
    out: &mut Vec<(char, String)>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let load = |id: Option<TreeId>| -> Result<Tree> {
        id.map_or(Ok(Tree::default()), |id| repo.load_tree(index, &id))
    };
    let (ta, tb) = (load(a)?, load(b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let (na, nb) = (ta.nodes.get(i), tb.nodes.get(j));
        let ord = match (na, nb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let node = if ord == std::cmp::Ordering::Greater {
            nb
        } else {
            na
        };
        let path = format!(
            "{dir}{}",
            node.map(|n| n.display_name().into_owned())
                .unwrap_or_default()
        );
        let sub = |n: Option<&Node>| {
            n.and_then(|n| (n.kind == NodeKind::Dir).then_some(n.subtree).flatten())
        };
        match ord {
            std::cmp::Ordering::Less => {
                out.push(('-', path.clone()));
                diff_trees(repo, index, sub(na), None, &format!("{path}/"), out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(('+', path.clone()));
                diff_trees(repo, index, None, sub(nb), &format!("{path}/"), out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (na.expect("both"), nb.expect("both"));
                if x.kind != y.kind
                    || x.content != y.content
                    || x.symlink_target != y.symlink_target
                    || x.mode != y.mode
                {
                    out.push(('M', path.clone()));
                }
                diff_trees(repo, index, sub(na), sub(nb), &format!("{path}/"), out)?;
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}
