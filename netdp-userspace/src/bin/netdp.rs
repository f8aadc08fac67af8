//! `netdp`: the node agent and CLI.
use clap::Parser;

fn main() {
    // An empty NETDP_* variable counts as unset: a DaemonSet cannot leave a variable out
    // when its ConfigMap value is empty, and clap would take "" as the flag's value.
    for (name, value) in std::env::vars_os() {
        if value.is_empty() && name.to_string_lossy().starts_with("NETDP_") {
            // SAFETY: before any thread exists.
            unsafe { std::env::remove_var(&name) };
        }
    }
    let cli = netdp::cli::Cli::parse();
    if !matches!(cli.command, netdp::cli::Command::Agent(_)) {
        // A CLI piped into `head` ends quietly, as other tools do (Rust ignores SIGPIPE,
        // so println! would panic). The agent keeps ignoring it: its sockets may close.
        // SAFETY: restores the default disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match cli.log_format {
        netdp::cli::LogFormat::Text => logger.format_timestamp_millis(),
        // One event per line with its fields, for log pipelines.
        netdp::cli::LogFormat::Json => logger.format(|buf, record| {
            use std::io::Write;
            let ts = buf.timestamp_millis().to_string();
            let event = serde_json::json!({
                "ts": ts,
                "level": record.level().as_str().to_lowercase(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{event}")
        }),
    };
    logger.init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(netdp::cli::run(cli)) {
        eprintln!("error: {}", netdp::util::one_line(&format!("{e:#}")));
        std::process::exit(netdp::cli::exit_code(&e));
    }
}
