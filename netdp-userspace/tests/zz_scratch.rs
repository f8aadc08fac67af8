use netdp_testbed::{Spec, Testbed};
#[test]
fn scratch() {
    let backend = std::env::var("BACKEND").unwrap_or(r#"{"Type": "vxlan"}"#.into());
    let spec = Spec::default().underlays(2).node("n1", 0).node("n2", 0).node("n3", 1).outside()
        .network(&format!(r#"{{"Network": "10.244.0.0/16", "Backend": {backend}}}"#));
    let mut tb = Testbed::new(spec).unwrap();
    tb.start_all_agents(&[]).unwrap();
    for n in ["n1", "n2", "n3"] { tb.add_pod(n, "p1").unwrap(); }
    let mut info = String::new();
    for n in ["n1", "n2", "n3"] { let p = tb.pod(n, "p1"); info += &format!("{} {} {} {}\n", n, tb.node(n).ns, p.ns, p.ip); }
    std::fs::write("/tmp/scratch-tb.txt", info).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(std::env::var("HOLD").ok().and_then(|s| s.parse().ok()).unwrap_or(900)));
}
