//! vitctl: manage a vit datastore, as `esxcli vsan iscsi` manages vSAN's iSCSI target service.

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use vit::config::AuthType;
use vit::ctl::view::{Tabular, table};
use vit::ctl::{self, AuthSpec, Ctl, CtlError, LunSpec, TargetChange, TargetSpec};
use vit::daemon::portal;
use vit::datastore::{self, Datastore};

#[derive(Parser)]
#[command(
    name = "vitctl",
    version,
    about = "Manage a vit iSCSI target datastore"
)]
struct Cli {
    /// The datastore directory [default: the one vitd uses when run without --datastore]
    #[arg(long, env = "VIT_DATASTORE", global = true)]
    datastore: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// The home object: .iSCSI-Config on the datastore
    #[command(subcommand)]
    Homeobject(HomeCmd),
    /// iSCSI targets and their LUNs
    #[command(subcommand)]
    Target(TargetCmd),
    /// Initiator groups (which initiators may reach a target)
    #[command(subcommand)]
    Initiatorgroup(GroupCmd),
    /// The configuration file as a whole
    #[command(subcommand)]
    Config(ConfigCmd),
}

#[derive(Subcommand)]
enum HomeCmd {
    /// Create the home object (no change if it exists)
    Create {
        /// Where the default portal group listens
        #[arg(long, default_value = "0.0.0.0:3260")]
        listen: String,
    },
    /// Show the home object
    Get,
}

#[derive(Args, Default)]
struct AuthArgs {
    /// none, chap or chap-mutual
    #[arg(long, value_parser = parse_auth_type)]
    auth_type: Option<AuthType>,
    /// The initiator's CHAP user name (chap, chap-mutual)
    #[arg(long)]
    chap_user: Option<String>,
    /// The initiator's CHAP secret (12 to 16 bytes for most initiators)
    #[arg(long)]
    chap_secret: Option<String>,
    /// The target's user name for mutual CHAP
    #[arg(long)]
    mutual_user: Option<String>,
    /// The target's secret for mutual CHAP
    #[arg(long)]
    mutual_secret: Option<String>,
}

impl AuthArgs {
    fn spec(self) -> AuthSpec {
        AuthSpec {
            auth_type: self.auth_type,
            chap_user: self.chap_user,
            chap_secret: self.chap_secret,
            mutual_user: self.mutual_user,
            mutual_secret: self.mutual_secret,
        }
    }
}

fn parse_auth_type(s: &str) -> Result<AuthType, String> {
    match AuthType::parse(s) {
        Some(AuthType::Deny) | None => Err(format!("{s:?} is not one of none, chap, chap-mutual")),
        Some(t) => Ok(t),
    }
}

#[derive(Subcommand)]
enum TargetCmd {
    /// Add a target
    Add {
        /// The target's name for vitctl and TargetAlias (unique among aliases and IQNs)
        #[arg(long)]
        alias: String,
        /// The target's iSCSI name [default: generated]
        #[arg(long)]
        iqn: Option<String>,
        /// ADDR:PORT, IFNAME:PORT or HOST:PORT; targets with the same value share a portal group
        #[arg(long)]
        listen: Option<String>,
        #[command(flatten)]
        auth: AuthArgs,
        /// Only initiators of this group may log in
        #[arg(long)]
        initiator_group: Option<String>,
    },
    /// Show a target (by alias or IQN)
    Get {
        /// The target's alias or IQN
        target: String,
    },
    /// List targets
    List,
    /// Remove a target, its LUNs and their files
    Remove {
        /// The target's alias or IQN
        target: String,
    },
    /// Change a target
    Set {
        /// The target's alias or IQN
        target: String,
        /// A new alias
        #[arg(long)]
        new_alias: Option<String>,
        /// A new iSCSI name
        #[arg(long)]
        iqn: Option<String>,
        /// ADDR:PORT, IFNAME:PORT or HOST:PORT; targets with the same value share a portal group
        #[arg(long)]
        listen: Option<String>,
        #[command(flatten)]
        auth: AuthArgs,
        /// Only initiators of this group may log in
        #[arg(long, conflicts_with = "no_initiator_group")]
        initiator_group: Option<String>,
        /// Open the target to every initiator again
        #[arg(long)]
        no_initiator_group: bool,
    },
    /// LUNs of a target
    #[command(subcommand)]
    Lun(LunCmd),
}

#[derive(Subcommand)]
enum LunCmd {
    /// Add a LUN: a VMDK descriptor and its flat extent
    Add {
        /// The target's alias or IQN
        #[arg(long)]
        target: String,
        /// The LUN number
        #[arg(long)]
        id: u64,
        /// With a unit (B, K, M, G or T): 512M, 10G, 1T; a multiple of 512 bytes
        #[arg(long, allow_hyphen_values = true)]
        size: String,
        /// The LUN's alias (vit.conf's option lun-alias)
        #[arg(long)]
        alias: Option<String>,
        /// Allocate the extent now (thick) instead of sparse (thin)
        #[arg(long)]
        preallocate: bool,
    },
    /// Show a LUN
    Get {
        /// The target's alias or IQN
        #[arg(long)]
        target: String,
        /// The LUN number
        #[arg(long)]
        id: u64,
    },
    /// List a target's LUNs
    List {
        /// The target's alias or IQN
        #[arg(long)]
        target: String,
    },
    /// Remove a LUN and delete its files
    Remove {
        /// The target's alias or IQN
        #[arg(long)]
        target: String,
        /// The LUN number
        #[arg(long)]
        id: u64,
    },
    /// Grow (never shrink) or rename a LUN
    Set {
        /// The target's alias or IQN
        #[arg(long)]
        target: String,
        /// The LUN number
        #[arg(long)]
        id: u64,
        /// The new, larger size, with a unit
        #[arg(long, allow_hyphen_values = true)]
        size: Option<String>,
        /// The LUN's alias (vit.conf's option lun-alias)
        #[arg(long)]
        alias: Option<String>,
        /// Serve the LUN read-only (on) or read-write (off)
        #[arg(long, value_parser = parse_on_off)]
        read_only: Option<bool>,
    },
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?} is not on or off")),
    }
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Add an initiator group
    Add {
        /// The group's name
        name: String,
        /// Initiator names (IQNs) in the group
        initiators: Vec<String>,
    },
    /// Show an initiator group
    Get {
        /// The group's name
        name: String,
    },
    /// List initiator groups
    List,
    /// Remove an initiator group no target uses
    Remove {
        /// The group's name
        name: String,
    },
    /// Add or remove initiators of a group
    #[command(subcommand)]
    Initiator(InitiatorCmd),
}

#[derive(Subcommand)]
enum InitiatorCmd {
    /// Add initiators to a group
    Add {
        /// The group's name
        name: String,
        /// Initiator names (IQNs)
        #[arg(required = true)]
        initiators: Vec<String>,
    },
    /// Remove initiators from a group
    Remove {
        /// The group's name
        name: String,
        /// Initiator names (IQNs)
        #[arg(required = true)]
        initiators: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check vit.conf and everything it refers to; exit 0 only when all holds
    Validate,
    /// Print vit.conf
    Show,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli
        .datastore
        .clone()
        .unwrap_or_else(datastore::default_root);
    match run(cli, root) {
        Ok(code) => code,
        Err(e) => {
            for line in e.to_string().lines() {
                eprintln!("vitctl: error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Writes `text` to standard output; a failure (a closed pipe, a full disk) is an error to
/// report, never a panic (as `print!` would make it).
fn out(text: &str) -> Result<(), CtlError> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| CtlError::Input(format!("standard output: {e}")))
}

/// Prints one object or a list in the chosen format.
fn show<T: Serialize + Tabular>(format: Format, rows: &[T], single: bool) -> Result<(), CtlError> {
    match format {
        Format::Table => out(&table(rows))?,
        Format::Json => {
            let text = if single && rows.len() == 1 {
                serde_json::to_string_pretty(&rows[0])
            } else {
                serde_json::to_string_pretty(rows)
            };
            out(&(text.map_err(|e| CtlError::Input(e.to_string()))? + "\n"))?;
        }
    }
    Ok(())
}

fn run(cli: Cli, root: PathBuf) -> Result<ExitCode, CtlError> {
    let format = cli.format;
    if let Cmd::Homeobject(HomeCmd::Create { listen }) = &cli.cmd {
        ctl::check_listen(listen)?;
        std::fs::create_dir_all(&root).map_err(|source| datastore::DatastoreError::Io {
            path: root.clone(),
            source,
        })?;
        let ds = Datastore::open(&root)?;
        if !ds.create_home_object(&ctl::initial_config(listen))? {
            eprintln!(
                "vitctl: the home object exists at {}: left as it is",
                ds.config_path().display()
            );
        }
        let ctl = Ctl::new(ds);
        show(format, &[ctl.home_object()?], true)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut ctl = Ctl::new(Datastore::open(&root)?);
    let result = dispatch(&mut ctl, cli.cmd, format);
    for w in &ctl.warnings {
        eprintln!("vitctl: warning: {w}");
    }
    result
}

fn dispatch(ctl: &mut Ctl, cmd: Cmd, format: Format) -> Result<ExitCode, CtlError> {
    match cmd {
        Cmd::Homeobject(HomeCmd::Create { .. }) => {
            unreachable!("handled before the datastore is opened")
        }
        Cmd::Homeobject(HomeCmd::Get) => show(format, &[ctl.home_object()?], true)?,
        Cmd::Target(t) => target(ctl, t, format)?,
        Cmd::Initiatorgroup(g) => group(ctl, g, format)?,
        Cmd::Config(ConfigCmd::Show) => out(&ctl.ds.read_config_text()?)?,
        Cmd::Config(ConfigCmd::Validate) => {
            let problems = ctl.ds.validate();
            if format == Format::Json {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                let v = serde_json::json!({ "valid": problems.is_empty(), "problems": list });
                out(&format!("{v:#}\n"))?;
            } else if problems.is_empty() {
                out(&format!("{}: valid\n", ctl.ds.config_path().display()))?;
            }
            for p in &problems {
                eprintln!("{p}");
            }
            if !problems.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn target(ctl: &mut Ctl, cmd: TargetCmd, format: Format) -> Result<(), CtlError> {
    match cmd {
        TargetCmd::Add {
            alias,
            iqn,
            listen,
            auth,
            initiator_group,
        } => {
            let spec = TargetSpec {
                alias,
                iqn,
                listen,
                auth: auth.spec(),
                initiator_group,
            };
            show(format, &[ctl.target_add(&spec)?], true)?;
            warn_of_listen_clash(ctl);
            Ok(())
        }
        TargetCmd::Get { target } => show(format, &[ctl.target_get(&target)?], true),
        TargetCmd::List => show(format, &ctl.target_list()?, false),
        TargetCmd::Remove { target } => show(format, &[ctl.target_remove(&target)?], true),
        TargetCmd::Set {
            target,
            new_alias,
            iqn,
            listen,
            auth,
            initiator_group,
            no_initiator_group,
        } => {
            let initiator_group = if no_initiator_group {
                Some(None)
            } else {
                initiator_group.map(Some)
            };
            let change = TargetChange {
                new_alias,
                iqn,
                listen,
                auth: auth.spec(),
                initiator_group,
            };
            show(format, &[ctl.target_set(&target, &change)?], true)?;
            warn_of_listen_clash(ctl);
            Ok(())
        }
        TargetCmd::Lun(l) => lun(ctl, l, format),
    }
}

/// After a change of the portal groups targets use: a warning when, as this host resolves
/// them (its interfaces and literal addresses; no DNS), two would clash as vitd's start check
/// says ([`portal::first_clash`]), so that vitd on this host would refuse to start. Only a
/// warning: vitctl may run on another host than vitd, where names resolve differently.
fn warn_of_listen_clash(ctl: &mut Ctl) {
    let (Ok(cfg), Ok(interfaces)) = (ctl.load(), portal::interface_addrs()) else {
        return;
    };
    // Each address with its group, and the `listen` value it came from.
    let mut listened: Vec<(SocketAddr, &str)> = Vec::new();
    let mut values: Vec<&str> = Vec::new();
    for (group, listens) in cfg.listened_portal_groups() {
        for value in listens {
            if let Ok(Some(addrs)) = portal::resolve_listen_locally(value, &interfaces) {
                values.extend(std::iter::repeat_n(value, addrs.len()));
                listened.extend(addrs.into_iter().map(|a| (a, group)));
            }
        }
    }
    let Some((at, with)) = portal::first_clash(&listened) else {
        return;
    };
    let ((a, group), (b, other)) = (listened[at], listened[with]);
    let (value, other_value) = (values[at], values[with]);
    let clash = if a == b {
        format!(
            "portal group {group} (--listen {value}) and portal group {other} (--listen \
             {other_value}) both listen on {a} as this host resolves them"
        )
    } else {
        format!(
            "portal group {group} (--listen {value}) listens on {a} as this host resolves it, \
             and portal group {other} (--listen {other_value}) on {b}: a wildcard and an \
             address of its family cannot both be listened on with one port"
        )
    };
    // vitctl shares a group written with that value; the implied `default` is written nowhere.
    let share = if cfg.portal_groups.iter().any(|p| p.name == other) {
        format!(
            "; for {group}'s targets to share portal group {other}, give them --listen \
             {other_value}"
        )
    } else {
        String::new()
    };
    ctl.warnings.push(format!(
        "{clash}; vitd on this host would refuse to start (on another host it may not){share}"
    ));
}

fn lun(ctl: &mut Ctl, cmd: LunCmd, format: Format) -> Result<(), CtlError> {
    match cmd {
        LunCmd::Add {
            target,
            id,
            size,
            alias,
            preallocate,
        } => {
            let spec = LunSpec {
                id,
                size_bytes: ctl::parse_size_arg(&size)?,
                alias,
                preallocate,
            };
            show(format, &[ctl.lun_add(&target, &spec)?], true)
        }
        LunCmd::Get { target, id } => show(format, &[ctl.lun_get(&target, id)?], true),
        LunCmd::List { target } => show(format, &ctl.lun_list(&target)?, false),
        LunCmd::Remove { target, id } => show(format, &[ctl.lun_remove(&target, id)?], true),
        LunCmd::Set {
            target,
            id,
            size,
            alias,
            read_only,
        } => {
            let size_bytes = size.as_deref().map(ctl::parse_size_arg).transpose()?;
            let change = ctl::LunChange {
                size_bytes,
                alias,
                read_only,
            };
            show(format, &[ctl.lun_set(&target, id, &change)?], true)
        }
    }
}

fn group(ctl: &mut Ctl, cmd: GroupCmd, format: Format) -> Result<(), CtlError> {
    match cmd {
        GroupCmd::Add { name, initiators } => {
            show(format, &[ctl.group_add(&name, &initiators)?], true)
        }
        GroupCmd::Get { name } => show(format, &[ctl.group_get(&name)?], true),
        GroupCmd::List => show(format, &ctl.group_list()?, false),
        GroupCmd::Remove { name } => show(format, &[ctl.group_remove(&name)?], true),
        GroupCmd::Initiator(InitiatorCmd::Add { name, initiators }) => show(
            format,
            &[ctl.group_initiators(&name, &initiators, true)?],
            true,
        ),
        GroupCmd::Initiator(InitiatorCmd::Remove { name, initiators }) => show(
            format,
            &[ctl.group_initiators(&name, &initiators, false)?],
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `vitctl ... --help` says what every command and argument is (a newcomer found blank
    /// lines for --target, --id, --alias, --chap-user, a group's NAME, ...).
    #[test]
    fn every_command_and_argument_says_what_it_is() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                if a.get_help().is_none() && !matches!(a.get_id().as_str(), "help" | "version") {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let at = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(at.clone());
                }
                walk(sub, &at, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "vitctl", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:#?}");
    }
}
