// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Command line of the vhost-user-scsi daemon.

use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use vhost_user_scsi::config::Config;

const SERVE_EXAMPLES: &str = "\
Examples:
  # One VM, one disk image:
  vhost-user-scsi serve --socket /run/vm1-scsi.sock --lun file=/srv/vm1.img

  # LUN 0 writable, LUN 1 a read-only ISO-like image with 4096-byte blocks:
  vhost-user-scsi serve --socket /run/vm1.sock \\
      --lun file=/srv/data.img --lun file=/srv/golden.img,ro,block-size=4096

  # Two VMs (two sockets) sharing /srv/shared.img; each --lun belongs to the
  # --socket before it:
  vhost-user-scsi serve \\
      --socket /run/vm1.sock --lun file=/srv/vm1.img --lun 1:file=/srv/shared.img \\
      --socket /run/vm2.sock,queues=4 --lun file=/srv/vm2.img --lun 1:file=/srv/shared.img

  # QEMU side (guest RAM must be shared with the daemon):
  qemu-system-x86_64 -m 1G \\
      -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\
      -chardev socket,id=c0,path=/run/vm1-scsi.sock \\
      -device vhost-user-scsi-pci,chardev=c0 ...

Logging goes to stderr; set RUST_LOG=debug (or warn, ...) to change the level.";

/// vhost-user-scsi backend daemon for QEMU guests.
#[derive(Parser)]
#[command(name = "vhost-user-scsi", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SCSI disks to QEMU over vhost-user sockets.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve {
        /// vhost-user socket to listen on (created; an existing file is
        /// replaced). Starts a controller: the --lun options after it are its
        /// LUNs. queues=N sets how many request queues it offers (default 16;
        /// QEMU's num_queues must not exceed it). initiator=NAME names the
        /// controller's I_T nexus for persistent reservations (an iSCSI name;
        /// default derived from PATH).
        #[arg(long, value_name = "PATH[,queues=N][,initiator=NAME]", required = true)]
        socket: Vec<String>,
        /// A logical unit backed by a regular file or block device. N is the
        /// LUN number (default: one more than the previous LUN, from 0).
        /// ro: read-only; block-size: logical block size (default 512);
        /// direct: open with O_DIRECT; serial: unit serial number (default:
        /// derived from the canonical path, stable across restarts); pr-file:
        /// where APTPL reservation state is kept (default PATH.pr, or
        /// /var/lib/vhost-user-scsi/SERIAL.pr for a block device).
        #[arg(
            long,
            value_name = "[N:]file=PATH[,ro][,block-size=512|4096][,direct][,serial=S][,pr-file=P]"
        )]
        lun: Vec<String>,
    },
}

/// `--socket` and `--lun` values in the order they were given.
fn ordered_serve_args(m: &ArgMatches) -> Vec<(bool, String)> {
    let mut v: Vec<(usize, bool, String)> = Vec::new();
    for (id, is_socket) in [("socket", true), ("lun", false)] {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
            v.extend(idx.zip(vals).map(|(i, s)| (i, is_socket, s.clone())));
        }
    }
    v.sort_by_key(|(i, _, _)| *i);
    v.into_iter().map(|(_, s, v)| (s, v)).collect()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (m, c)));
    let (matches, cli) = match parsed {
        Ok(p) => p,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line: clap's first line without its "error: " prefix.
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            eprintln!(
                "vhost-user-scsi: {} (see --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve { .. } => {
            let sub = matches.subcommand_matches("serve").unwrap_or(&matches);
            Config::from_ordered_args(&ordered_serve_args(sub))
                .map_err(|e| error_chain(&e))
                .and_then(|cfg| vhost_user_scsi::server::serve(cfg).map_err(|e| error_chain(&e)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("vhost-user-scsi: {msg}");
            ExitCode::FAILURE
        }
    }
}
