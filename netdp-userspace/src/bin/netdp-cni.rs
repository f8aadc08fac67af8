//! `netdp-cni`: the CNI plugin. Reads the network config on stdin, the command in the
//! environment, and prints a result or an error as JSON.
use std::io::Read;

fn main() {
    let mut stdin = String::new();
    let env = netdp::cni::Env::from_process();
    if env.command != "VERSION"
        && let Err(e) = std::io::stdin().read_to_string(&mut stdin)
    {
        let err = netdp::cni::types::CniError::new(
            netdp::cni::types::code::DECODE,
            format!("reading the network config from stdin: {e}"),
        );
        println!("{}", err.to_json("1.1.0"));
        std::process::exit(1);
    }
    let (out, ok) = netdp::cni::run(&env, &stdin);
    if !out.is_empty() {
        println!("{out}");
    }
    std::process::exit(if ok { 0 } else { 1 });
}
