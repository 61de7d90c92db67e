//! kxl: kxen's xl-compatible toolstack command.
//!
//! Every command is a request to kxend (started on demand); output layout,
//! messages and exit codes follow xl's.

mod client;
mod console;
mod format;
mod migrate;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kxen_toolstack::config::DomainConfig;
use kxen_toolstack::protocol::{ConsoleKind, DomainEntry, Reply, Request};
use kxen_toolstack::xl;

use client::Client;

#[derive(Parser, Debug)]
#[command(name = "kxl", version, about = "kxen's xl-compatible toolstack")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a domain from a config file.
    Create {
        /// Leave the domain paused after it is created.
        #[arg(short = 'p')]
        paused: bool,
        /// Connect to the console after the domain is created.
        #[arg(short = 'c')]
        console: bool,
        /// Quiet.
        #[arg(short = 'q')]
        quiet: bool,
        config: String,
        /// key=value settings that override the file.
        overrides: Vec<String>,
    },
    /// Terminate a domain immediately.
    Destroy { domain: String },
    /// Issue a shutdown signal to a domain.
    Shutdown {
        /// Wait for the domain to complete shutdown.
        #[arg(short = 'w')]
        wait: bool,
        domain: String,
    },
    /// Issue a reboot signal to a domain.
    Reboot {
        #[arg(short = 'w')]
        wait: bool,
        domain: String,
    },
    /// Save a domain state to restore later.
    Save {
        /// Leave the domain running after creating the snapshot.
        #[arg(short = 'c')]
        checkpoint: bool,
        /// Leave the domain paused after creating the snapshot.
        #[arg(short = 'p')]
        paused: bool,
        domain: String,
        file: String,
        /// A config file to store in place of the domain's own config.
        config: Option<String>,
    },
    /// Restore a domain from a saved state.
    Restore {
        /// Do not unpause the domain after restoring it.
        #[arg(short = 'p')]
        paused: bool,
        /// Connect to the console after the domain is restored.
        #[arg(short = 'c')]
        console: bool,
        /// Do not wait in the background for the domain's death.
        #[arg(short = 'e')]
        no_wait: bool,
        /// `[CFG] FILE`.
        #[arg(num_args = 1..=2)]
        args: Vec<String>,
    },
    /// Migrate a domain to another host.
    Migrate {
        /// Use SSHCOMMAND instead of ssh (`exec SSHCOMMAND HOST kxl
        /// migrate-receive` runs under sh); an empty one runs HOST as
        /// the whole command.
        #[arg(short = 's', default_value = "ssh")]
        ssh_command: String,
        /// Send this config file instead of the domain's own.
        #[arg(short = 'C')]
        config: Option<String>,
        /// Do not daemonize (accepted as xl does).
        #[arg(short = 'F')]
        foreground: bool,
        /// Do not wait for the domain's death (accepted as xl does).
        #[arg(short = 'e')]
        no_wait: bool,
        /// Leave the domain paused on the destination.
        #[arg(short = 'p')]
        pause_after: bool,
        /// Ask the receiver for debug output.
        #[arg(long)]
        debug: bool,
        /// Ignored (xm compatibility).
        #[arg(long)]
        live: bool,
        domain: String,
        host: String,
    },
    /// Receive a migrating domain (run by `migrate` on the destination).
    MigrateReceive {
        #[arg(short = 'F')]
        foreground: bool,
        #[arg(short = 'e')]
        no_wait: bool,
        #[arg(short = 'd')]
        debug: bool,
        /// Leave the domain paused after it arrives.
        #[arg(short = 'p')]
        pause_after: bool,
    },
    /// Pause execution of a domain.
    Pause { domain: String },
    /// Unpause a paused domain.
    Unpause { domain: String },
    /// List information about all or some domains.
    List {
        /// Long output (JSON).
        #[arg(short = 'l', long)]
        long: bool,
        /// Verbose output.
        #[arg(short = 'v', long)]
        verbose: bool,
        domains: Vec<String>,
    },
    /// Attach to a domain's console.
    Console {
        /// Console type: pv or serial (default: serial for HVM domains).
        #[arg(short = 't', value_parser = ["pv", "serial"])]
        kind: Option<String>,
        domain: String,
    },
    /// Convert a domain name to a domain id.
    Domid { name: String },
    /// Convert a domain id to a domain name.
    Domname { domid: String },
    /// Get information about the host.
    Info,
    /// Read and/or clear the hypervisor's message buffer.
    Dmesg {
        #[arg(short = 'c')]
        clear: bool,
    },
    /// List the vCPUs of all or some domains.
    VcpuList { domains: Vec<String> },
    /// Set which CPUs a domain's vCPU (or all of them) may run on.
    VcpuPin {
        domain: String,
        /// A vCPU number or `all`.
        vcpu: String,
        /// Hard affinity: CPUs as `0-3,^2`, `all`, or `-` to keep it.
        #[arg(allow_hyphen_values = true)]
        hard: String,
        /// Soft affinity (kept and shown; Linux has none to apply).
        #[arg(allow_hyphen_values = true)]
        soft: Option<String>,
    },
    /// Show or change the credit scheduler's weight and cap of domains.
    SchedCredit {
        #[arg(short = 'd', long = "domain")]
        domain: Option<String>,
        /// Weight, 1 to 65535 (xl reads it as strtol does).
        #[arg(short = 'w', long = "weight", allow_hyphen_values = true)]
        weight: Option<String>,
        /// Cap in percent of one CPU, 0 for none.
        #[arg(short = 'c', long = "cap", allow_hyphen_values = true)]
        cap: Option<String>,
        /// Show the pool's scheduler parameters.
        #[arg(short = 's', long = "schedparam")]
        schedparam: bool,
        #[arg(short = 't', long = "tslice_ms")]
        tslice: Option<String>,
        #[arg(short = 'r', long = "ratelimit_us")]
        ratelimit: Option<String>,
        #[arg(short = 'm', long = "migration_delay_us")]
        migration_delay: Option<String>,
        #[arg(short = 'p', long = "cpupool")]
        cpupool: Option<String>,
    },
    /// Set the current memory usage of a domain.
    MemSet { domain: String, memory: String },
    /// Print the uptime of all or some domains.
    Uptime {
        #[arg(short = 's')]
        short: bool,
        domains: Vec<String>,
    },
    /// Create a new virtual block device.
    BlockAttach {
        domain: String,
        /// The disk spec (xl-disk-configuration), as one or more arguments.
        #[arg(required = true)]
        disk: Vec<String>,
    },
    /// Destroy a domain's virtual block device.
    BlockDetach {
        /// Remove the device even if the guest does not release it.
        #[arg(short = 'f', long)]
        force: bool,
        domain: String,
        /// Device number or vdev (xvda, 51712...).
        device: String,
    },
    /// List virtual block devices for a domain.
    BlockList {
        /// Also print the backend's request counters.
        #[arg(short = 's', long)]
        stats: bool,
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// Create a new virtual network device.
    NetworkAttach {
        domain: String,
        /// Settings as in a vif spec: mac=, bridge=, ...
        settings: Vec<String>,
    },
    /// Destroy a domain's virtual network device.
    NetworkDetach {
        domain: String,
        /// Device index or MAC address.
        device: String,
    },
    /// List virtual network interfaces for a domain, with their counters.
    NetworkList {
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// Monitor the host and its domains in real time.
    Top {
        /// Refresh interval in seconds.
        #[arg(short = 'd', default_value_t = 1)]
        delay: u64,
        /// Stop after this many refreshes (0: until interrupted).
        #[arg(short = 'n', default_value_t = 0)]
        iterations: u64,
    },
}

fn fail(msg: impl AsRef<str>) -> ExitCode {
    eprintln!("{}", msg.as_ref());
    ExitCode::FAILURE
}

/// A failure in kxl's own words (xl prefixes its own lines with `xl: `),
/// as opposed to one of xl's messages, which kxl prints as xl does.
fn fail_own(msg: impl std::fmt::Display) -> ExitCode {
    fail(format!("{}{msg}", format::OWN_PREFIX))
}

fn call(req: Request) -> Result<Reply, ExitCode> {
    let mut client = Client::connect().map_err(fail_own)?;
    client.call(&req).map_err(fail_own)
}

/// xl's answer when a named domain does not exist (xl_utils.c:
/// find_domain): every domain in `wanted` must be in `all`.
fn all_known(all: &[DomainEntry], wanted: &[String]) -> Result<(), ExitCode> {
    match wanted.iter().find(|d| !all.iter().any(|e| matches(e, d))) {
        Some(d) => Err(fail(format::unknown_domain(d))),
        None => Ok(()),
    }
}

/// The config file a `save`, `restore` or `migrate` puts in place of the
/// domain's own, parsed as `create` would; its warnings are printed, a
/// bad one is reported with xl's exit code.
fn load_replacement_config(path: &str) -> Result<Box<DomainConfig>, ExitCode> {
    match format::load_config(path, &[]) {
        Ok(parsed) => {
            for w in &parsed.warnings {
                eprintln!("{w}");
            }
            Ok(Box::new(parsed.config))
        }
        Err((text, code)) => {
            eprintln!("{text}");
            Err(ExitCode::from(code as u8))
        }
    }
}

/// `path` made absolute against our working directory: kxend has its own.
fn absolute(path: &str) -> String {
    std::path::absolute(path)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| path.to_string())
}

/// Run a request whose only output is success or xl's error message.
fn simple(req: Request) -> ExitCode {
    match call(req) {
        Ok(r) if r.ok => ExitCode::SUCCESS,
        Ok(r) => fail(format::error_message(&r)),
        Err(code) => code,
    }
}

/// A request xl's words may refuse (`sched-credit`, `vcpu-pin`): print
/// them as they are; exit 1 when the request failed.
fn xl_outcome(reply: &Reply) -> ExitCode {
    for line in reply.xl_messages.iter().flatten() {
        eprintln!("{line}");
    }
    match reply {
        Reply { ok: true, .. } => ExitCode::SUCCESS,
        Reply {
            xl_messages: Some(_),
            ..
        } => ExitCode::FAILURE,
        r => fail(format::error_message(r)),
    }
}

/// Hot-plug a device: an unknown domain gets xl's message (`unknown`
/// words it), any other failure (a missing image, a failed hotplug
/// script) kxl's own line.
fn attach(req: Request, unknown: fn(&str) -> String) -> ExitCode {
    match call(req) {
        Ok(r) if r.ok => ExitCode::SUCCESS,
        Ok(Reply {
            unknown_domain: Some(domain),
            ..
        }) => fail(unknown(&domain)),
        Ok(r) => fail_own(format::error_message(&r)),
        Err(code) => code,
    }
}

/// Whether `d` (a name or an id) names this entry.
fn matches(e: &DomainEntry, d: &str) -> bool {
    e.info.name == d || e.info.domid.to_string() == d
}

/// The domid of a domain, if kxend knows it.
fn resolve(domain: &str) -> Option<u32> {
    call(Request::Resolve {
        domain: domain.into(),
    })
    .ok()
    .filter(|r| r.ok)
    .and_then(|r| r.domid)
}

fn wait_gone(domain: &str) -> ExitCode {
    match call(Request::WaitGone {
        domain: domain.into(),
        timeout_s: 300,
    }) {
        Ok(r) if r.ok => ExitCode::SUCCESS,
        Ok(r) => fail(format::error_message(&r)),
        Err(code) => code,
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            // xl answers a bad command line with the command's usage and
            // exit status 2.
            let command = std::env::args().nth(1);
            let known = command.as_deref().and_then(xl::cmd_lookup).map(|c| c.name);
            eprint!("{}", xl::help(known));
            return ExitCode::from(xl::EXIT_USAGE as u8);
        }
    };
    match cli.command {
        Cmd::Create {
            paused,
            console,
            quiet,
            config,
            overrides,
        } => {
            if !quiet {
                eprintln!("{}", xl::parsing_config_from(&config));
            }
            let parsed = match format::load_config(&config, &overrides) {
                Ok(p) => p,
                Err((text, code)) => {
                    eprintln!("{text}");
                    return ExitCode::from(code as u8);
                }
            };
            for w in &parsed.warnings {
                eprintln!("{w}");
            }
            let reply = match call(Request::Create {
                config: Box::new(parsed.config),
                config_path: config.clone(),
                paused,
            }) {
                Ok(r) => r,
                Err(code) => return code,
            };
            if !reply.ok {
                return fail(format::create_error_message(&reply));
            }
            if console {
                let domid = reply.domid.unwrap_or(0).to_string();
                return console_cmd(&domid, None);
            }
            ExitCode::SUCCESS
        }
        Cmd::Destroy { domain } => simple(Request::Destroy { domain }),
        Cmd::Shutdown { wait, domain } => {
            if let Some(id) = resolve(&domain) {
                eprintln!("{}", xl::shutting_down(id));
            }
            let code = simple(Request::Shutdown {
                domain: domain.clone(),
            });
            if wait && code == ExitCode::SUCCESS {
                eprintln!("Waiting for 1 domains");
                return wait_gone(&domain);
            }
            code
        }
        Cmd::Reboot { wait, domain } => {
            if let Some(id) = resolve(&domain) {
                eprintln!("{}", xl::rebooting(id));
            }
            let code = simple(Request::Reboot {
                domain: domain.clone(),
            });
            if wait && code == ExitCode::SUCCESS {
                return wait_gone(&domain);
            }
            code
        }
        Cmd::Save {
            checkpoint,
            paused,
            domain,
            file,
            config,
        } => {
            let config = match config.as_deref().map(load_replacement_config) {
                Some(Ok(c)) => Some(c),
                Some(Err(code)) => return code,
                None => None,
            };
            let path = absolute(&file);
            eprintln!("Saving to {path} new xl format");
            simple(Request::Save {
                domain,
                path,
                checkpoint,
                leave_paused: paused,
                config,
            })
        }
        Cmd::Restore {
            paused,
            console,
            no_wait: _,
            args,
        } => {
            let (config, file) = match args.as_slice() {
                [file] => (None, file),
                [cfg, file] => match load_replacement_config(cfg) {
                    Ok(c) => (Some(c), file),
                    Err(code) => return code,
                },
                _ => return fail("kxl restore: expected [CFG] FILE"),
            };
            let path = absolute(file);
            eprintln!("Loading new save file {path} (new xl fmt info 0x3/0x0)");
            let reply = match call(Request::Restore {
                path,
                paused,
                config,
            }) {
                Ok(r) => r,
                Err(code) => return code,
            };
            if !reply.ok {
                return fail(format::error_message(&reply));
            }
            if console {
                let domid = reply.domid.unwrap_or(0).to_string();
                return console_cmd(&domid, None);
            }
            ExitCode::SUCCESS
        }
        Cmd::Migrate {
            ssh_command,
            config,
            pause_after,
            debug,
            domain,
            host,
            ..
        } => {
            let config = match config.as_deref().map(load_replacement_config) {
                Some(Ok(c)) => Some(*c),
                Some(Err(code)) => return code,
                None => None,
            };
            migrate::send(migrate::SendOptions {
                domain: &domain,
                host: &host,
                ssh_command: &ssh_command,
                config,
                debug,
                pause_after,
            })
        }
        Cmd::MigrateReceive { pause_after, .. } => migrate::receive(pause_after),
        Cmd::Pause { domain } => simple(Request::Pause { domain }),
        Cmd::Unpause { domain } => simple(Request::Unpause { domain }),
        Cmd::List {
            long,
            verbose,
            domains,
        } => {
            let reply = match call(Request::List) {
                Ok(r) => r,
                Err(code) => return code,
            };
            let mut all = reply.domains.unwrap_or_default();
            if !domains.is_empty() {
                for d in &domains {
                    if !all.iter().any(|e| matches(e, d)) {
                        return fail(if d.parse::<u32>().is_ok() {
                            xl::domain_does_not_exist(d)
                        } else {
                            format::unknown_domain(d)
                        });
                    }
                }
                all.retain(|e| domains.iter().any(|d| matches(e, d)));
            }
            print!("{}", format::list(&all, long, verbose));
            ExitCode::SUCCESS
        }
        Cmd::Console { domain, kind } => console_cmd(&domain, kind.as_deref()),
        Cmd::Domid { name } => match call(Request::Resolve {
            domain: name.clone(),
        }) {
            Ok(r) if r.ok && name.parse::<u32>().is_err() => {
                print!("{}", xl::domid_output(r.domid.unwrap_or(0)));
                ExitCode::SUCCESS
            }
            Ok(_) => fail(xl::cant_get_domid(&name)),
            Err(code) => code,
        },
        Cmd::Domname { domid } => match call(Request::Resolve {
            domain: domid.clone(),
        }) {
            Ok(r) if r.ok && domid.parse::<u32>().is_ok() => {
                let name = r
                    .domains
                    .and_then(|d| d.into_iter().next())
                    .map(|d| d.info.name)
                    .unwrap_or_default();
                print!("{}", xl::domname_output(&name));
                ExitCode::SUCCESS
            }
            Ok(_) => match domid.parse::<u32>() {
                Ok(id) => fail(xl::cant_get_domname(id)),
                Err(_) => fail(xl::INVALID_DOMAIN_ID),
            },
            Err(code) => code,
        },
        Cmd::Info => match call(Request::Info) {
            Ok(r) if r.ok => {
                print!("{}", format::info(&r.host.unwrap_or_default()));
                ExitCode::SUCCESS
            }
            Ok(r) => fail(format::error_message(&r)),
            Err(code) => code,
        },
        Cmd::Dmesg { clear } => match call(Request::Dmesg { clear }) {
            Ok(r) if r.ok => {
                print!("{}", r.text.unwrap_or_default());
                ExitCode::SUCCESS
            }
            Ok(r) => fail(format::error_message(&r)),
            Err(code) => code,
        },
        Cmd::VcpuList { domains } => match call(Request::List) {
            Ok(r) if r.ok => {
                let all = r.domains.unwrap_or_default();
                if let Err(code) = all_known(&all, &domains) {
                    return code;
                }
                let chosen: Vec<_> = all
                    .into_iter()
                    .filter(|e| domains.is_empty() || domains.iter().any(|d| matches(e, d)))
                    .collect();
                print!("{}", format::vcpu_list(&chosen));
                ExitCode::SUCCESS
            }
            Ok(r) => fail(format::error_message(&r)),
            Err(code) => code,
        },
        Cmd::VcpuPin {
            domain,
            vcpu,
            hard,
            soft,
        } => match call(Request::VcpuPin {
            domain,
            vcpu,
            hard,
            soft,
        }) {
            Ok(r) => xl_outcome(&r),
            Err(code) => code,
        },
        Cmd::SchedCredit {
            domain,
            weight,
            cap,
            schedparam,
            tslice,
            ratelimit,
            migration_delay,
            cpupool,
        } => {
            let set_pool = tslice.is_some() || ratelimit.is_some() || migration_delay.is_some();
            let set_domain = weight.is_some() || cap.is_some();
            if (cpupool.is_some() || schedparam) && (domain.is_some() || set_domain) {
                return fail(xl::NO_POOL_WITH_DOMAIN_OPTIONS);
            }
            if domain.is_none() && set_domain {
                return fail(xl::MUST_SPECIFY_DOMAIN);
            }
            if !schedparam && set_pool {
                return fail(xl::MUST_SPECIFY_SCHEDPARAM);
            }
            if let Some(pool) = cpupool.as_deref().filter(|p| *p != xl::POOL0 && *p != "0") {
                return fail(xl::unknown_cpupool(pool));
            }
            if schedparam {
                if set_pool {
                    // libxl reads the pool's parameters before changing
                    // them, and kxen has none.
                    return fail(xl::CREDIT_PARAMS_GET_FAILED);
                }
                print!("{}", xl::sched_credit_pool_unavailable(xl::POOL0));
                return ExitCode::SUCCESS;
            }
            match (domain, set_domain) {
                (Some(domain), true) => match call(Request::SchedCredit {
                    domain,
                    weight: weight.as_deref().map(xl::sched_option_value),
                    cap: cap.as_deref().map(xl::sched_option_value),
                }) {
                    Ok(r) => xl_outcome(&r),
                    Err(code) => code,
                },
                (domain, _) => match call(Request::List) {
                    Ok(r) if r.ok => {
                        let all = r.domains.unwrap_or_default();
                        let chosen: Vec<DomainEntry> = match &domain {
                            Some(d) => match all.into_iter().find(|e| matches(e, d)) {
                                Some(e) => vec![e],
                                None => return fail(format::unknown_domain(d)),
                            },
                            None => {
                                print!("{}", xl::sched_credit_pool_unavailable(xl::POOL0));
                                all
                            }
                        };
                        print!("{}", format::sched_credit(&chosen));
                        ExitCode::SUCCESS
                    }
                    Ok(r) => fail(format::error_message(&r)),
                    Err(code) => code,
                },
            }
        }
        Cmd::MemSet { domain, memory } => match xl::parse_mem_size_kb(&memory) {
            None => fail(xl::invalid_memory_size(&memory)),
            Some(target_kib) => simple(Request::MemSet { domain, target_kib }),
        },
        Cmd::Uptime { short, domains } => match call(Request::List) {
            Ok(r) if r.ok => {
                let all = r.domains.unwrap_or_default();
                if let Err(code) = all_known(&all, &domains) {
                    return code;
                }
                let chosen: Vec<_> = all
                    .into_iter()
                    .filter(|e| domains.is_empty() || domains.iter().any(|d| matches(e, d)))
                    .collect();
                print!("{}", format::uptime(&chosen, short));
                ExitCode::SUCCESS
            }
            Ok(r) => fail(format::error_message(&r)),
            Err(code) => code,
        },
        Cmd::BlockAttach { domain, disk } => {
            match kxen_toolstack::disk::DiskSpec::parse_components(&disk) {
                Ok(mut spec) => {
                    format::absolutize_disk(&mut spec);
                    // xl_block.c: block-attach leaves out the rc.
                    attach(
                        Request::BlockAttach {
                            domain,
                            disk: Box::new(spec),
                        },
                        xl::invalid_domain_no_rc,
                    )
                }
                Err(e) => fail(e.to_string()),
            }
        }
        Cmd::BlockDetach {
            force,
            domain,
            device,
        } => simple(Request::BlockDetach {
            domain,
            device,
            force,
        }),
        Cmd::BlockList { stats, domains } => {
            let mut code = ExitCode::SUCCESS;
            for domain in domains {
                match call(Request::BlockList {
                    domain: domain.clone(),
                }) {
                    Ok(r) if r.ok => {
                        print!(
                            "{}",
                            format::block_list(&r.devices.unwrap_or_default(), stats)
                        )
                    }
                    Ok(r) if r.unknown_domain.is_some() => {
                        eprintln!("{}", xl::invalid_domain_no_rc(&domain));
                        code = ExitCode::FAILURE;
                    }
                    Ok(r) => code = fail(format::error_message(&r)),
                    Err(c) => return c,
                }
            }
            code
        }
        Cmd::NetworkAttach { domain, settings } => {
            match kxen_toolstack::vif::VifSpec::parse_tokens(settings.iter().map(String::as_str)) {
                Ok((vif, warnings)) => {
                    for w in warnings {
                        eprintln!("{w}");
                    }
                    attach(
                        Request::NetworkAttach {
                            domain,
                            vif: Box::new(vif),
                        },
                        xl::invalid_domain,
                    )
                }
                Err(e) => fail(e.to_string()),
            }
        }
        Cmd::NetworkDetach { domain, device } => simple(Request::NetworkDetach { domain, device }),
        Cmd::NetworkList { domains } => {
            let mut code = ExitCode::SUCCESS;
            for domain in domains {
                match call(Request::NetworkList {
                    domain: domain.clone(),
                }) {
                    Ok(r) if r.ok => {
                        print!("{}", format::network_list(&r.devices.unwrap_or_default()))
                    }
                    // xl_nic.c: network-list goes through find_domain,
                    // which gives the rc (unlike block-list).
                    Ok(r) if r.unknown_domain.is_some() => {
                        eprintln!("{}", xl::invalid_domain(&domain));
                        code = ExitCode::FAILURE;
                    }
                    Ok(r) => code = fail(format::error_message(&r)),
                    Err(c) => return c,
                }
            }
            code
        }
        Cmd::Top { delay, iterations } => {
            let mut n = 0;
            loop {
                let reply = match call(Request::List) {
                    Ok(r) => r,
                    Err(code) => return code,
                };
                // Clear the screen and home the cursor, then redraw.
                print!(
                    "\x1b[H\x1b[2J{}",
                    format::top(&reply.domains.unwrap_or_default())
                );
                n += 1;
                if iterations != 0 && n >= iterations {
                    return ExitCode::SUCCESS;
                }
                std::thread::sleep(Duration::from_secs(delay.max(1)));
            }
        }
    }
}

fn console_cmd(domain: &str, kind: Option<&str>) -> ExitCode {
    let mut client = match Client::connect() {
        Ok(c) => c,
        Err(e) => return fail_own(e),
    };
    let kind = match kind {
        Some("pv") => Some(ConsoleKind::Pv),
        Some("serial") => Some(ConsoleKind::Serial),
        _ => None,
    };
    match client.call(&Request::Console {
        domain: domain.into(),
        kind,
    }) {
        Ok(r) if r.ok => match console::attach(client.into_stream()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail_own(format!("console: {e}")),
        },
        Ok(r) => fail(format::error_message(&r)),
        Err(e) => fail_own(e),
    }
}
