//! How the agent programs the service maps (real maps, no traffic): frontends two services
//! both claim, backend ranges replaced without touching other services, Maglev tables that
//! run out, and a restarted agent adopting what is programmed.
use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use netdp::dataplane::{
    Dataplane, MapSizes, Pins,
    lb::{FrontendPlan, Lb, LbMaps, ServicePlan, frontend_key},
};
use netdp_common::lb::{Backend, frontend_flags};

const TCP: u8 = 6;

fn plan(vip: Ipv4Addr, backends: &[u8], maglev: bool) -> ServicePlan {
    let mut frontends = BTreeMap::new();
    frontends.insert(
        frontend_key(vip, 80, TCP),
        FrontendPlan {
            target_port: 8080,
            external: false,
            local_only: false,
            dsr: false,
        },
    );
    ServicePlan {
        frontends,
        backends: backends
            .iter()
            .map(|b| Backend {
                addr: [10, 244, 1, *b],
                flags: 0,
            })
            .collect(),
        local_count: 0,
        maglev,
        affinity_timeout: None,
    }
}

fn served_by(lb: &Lb, vip: Ipv4Addr) -> Option<Vec<u8>> {
    let f = lb.maps().get(vip, 80, TCP)?;
    Some(f.backends.iter().map(|b| b.addr[3]).collect())
}

fn fresh(sizes: &MapSizes) -> Lb {
    let mut dp = Dataplane::load(netdp::ebpf_object(), None, sizes).expect("programs load");
    Lb::new(LbMaps::take(&mut dp).unwrap(), sizes.maglev_table_size).unwrap()
}

#[test]
fn a_contested_frontend_goes_to_the_first_and_then_to_the_waiting_one() {
    let mut lb = fresh(&MapSizes::default());
    let vip = Ipv4Addr::new(10, 96, 0, 1);
    let s = lb.apply(vec![("default/a".into(), Some(plan(vip, &[1, 2], false)))]);
    assert_eq!(s.added, 1);
    lb.apply(vec![("default/b".into(), Some(plan(vip, &[3], false)))]);
    assert_eq!(
        served_by(&lb, vip),
        Some(vec![1, 2]),
        "the first service keeps it"
    );
    // a goes away: b, which wanted the same frontend, gets it.
    lb.apply(vec![("default/a".into(), None)]);
    assert_eq!(served_by(&lb, vip), Some(vec![3]));
    lb.apply(vec![("default/b".into(), None)]);
    assert_eq!(served_by(&lb, vip), None);
    assert_eq!(lb.backend_slots().0, 0, "every slot is free again");
}

#[test]
fn changing_a_service_rewrites_only_its_own_range() {
    let mut lb = fresh(&MapSizes::default());
    let (a, b) = (Ipv4Addr::new(10, 96, 0, 1), Ipv4Addr::new(10, 96, 0, 2));
    lb.apply(vec![
        ("default/a".into(), Some(plan(a, &[1, 2, 3], false))),
        ("default/b".into(), Some(plan(b, &[4, 5], false))),
    ]);
    let b_before = lb.maps().get(b, 80, TCP).unwrap().fe;
    let a_before = lb.maps().get(a, 80, TCP).unwrap().fe;
    let s = lb.apply(vec![("default/a".into(), Some(plan(a, &[1, 3], false)))]);
    assert_eq!((s.updated, s.failed), (1, 0));
    let a_after = lb.maps().get(a, 80, TCP).unwrap().fe;
    assert_ne!(
        a_after.backends, a_before.backends,
        "a new range for the new set"
    );
    assert_eq!(served_by(&lb, a), Some(vec![1, 3]));
    assert_eq!(
        lb.maps().get(b, 80, TCP).unwrap().fe,
        b_before,
        "b untouched"
    );
    // The same plan again is a no-op.
    let s = lb.apply(vec![("default/a".into(), Some(plan(a, &[1, 3], false)))]);
    assert_eq!((s.unchanged, s.updated), (1, 0));
    // 3 slots were freed (class 4) and 2 are in use (class 2), plus b's 2.
    assert_eq!(lb.backend_slots().0, 4);
}

#[test]
fn without_a_free_maglev_table_a_service_falls_back_to_random() {
    let sizes = MapSizes {
        maglev_tables: 1,
        ..Default::default()
    };
    let mut lb = fresh(&sizes);
    let (a, b) = (Ipv4Addr::new(10, 96, 0, 1), Ipv4Addr::new(10, 96, 0, 2));
    lb.apply(vec![("default/a".into(), Some(plan(a, &[1, 2], true)))]);
    lb.apply(vec![("default/b".into(), Some(plan(b, &[3, 4], true)))]);
    let flags = |v| lb.maps().get(v, 80, TCP).unwrap().fe.flags & frontend_flags::MAGLEV;
    assert_ne!(flags(a), 0);
    assert_eq!(flags(b), 0, "no table left: random, and still served");
    assert_eq!(served_by(&lb, b), Some(vec![3, 4]));
}

#[test]
fn a_restarted_agent_adopts_what_is_programmed() {
    let root = Path::new("/sys/fs/bpf").join(format!("netdp-lbtest-{}", std::process::id()));
    let pins = Pins::new(&root, "node").unwrap();
    let sizes = MapSizes::default();
    let plans: Vec<(String, ServicePlan)> = (0..50u8)
        .map(|i| {
            (
                format!("default/s{i}"),
                plan(Ipv4Addr::new(10, 96, 1, i), &[i, i + 1], i % 5 == 0),
            )
        })
        .collect();
    let result = std::panic::catch_unwind(|| {
        let mut dp = Dataplane::load(netdp::ebpf_object(), Some(&pins), &sizes).unwrap();
        let mut lb = Lb::new(LbMaps::take(&mut dp).unwrap(), sizes.maglev_table_size).unwrap();
        lb.set_config(Ipv4Addr::new(10, 244, 1, 1), 0).unwrap();
        let s = lb.adopt(plans.clone());
        assert_eq!((s.added, s.adopted), (50, 0));
        let before: Vec<_> = plans
            .iter()
            .map(|(_, p)| {
                let k = p.frontends.keys().next().unwrap();
                lb.maps()
                    .get(Ipv4Addr::from(k.addr), k.port, k.proto)
                    .unwrap()
                    .fe
            })
            .collect();
        drop(lb);
        drop(dp);

        // The next agent: same maps (pinned), one service changed, one gone.
        let mut dp = Dataplane::load(netdp::ebpf_object(), Some(&pins), &sizes).unwrap();
        let mut lb = Lb::new(LbMaps::take(&mut dp).unwrap(), sizes.maglev_table_size).unwrap();
        let mut next = plans.clone();
        next[7].1 = plan(Ipv4Addr::new(10, 96, 1, 7), &[99], false);
        next.pop();
        let s = lb.adopt(next.clone());
        assert_eq!(
            (s.adopted, s.added, s.removed, s.failed),
            (48, 1, 1, 0),
            "{s:?}"
        );
        for (i, (_, p)) in next.iter().enumerate() {
            let k = p.frontends.keys().next().unwrap();
            let now = lb
                .maps()
                .get(Ipv4Addr::from(k.addr), k.port, k.proto)
                .unwrap();
            if i == 7 {
                assert_eq!(
                    now.backends.iter().map(|b| b.addr[3]).collect::<Vec<_>>(),
                    vec![99]
                );
            } else {
                assert_eq!(now.fe, before[i], "service {i} was rewritten");
            }
        }
        assert!(
            lb.maps()
                .get(Ipv4Addr::new(10, 96, 1, 49), 80, TCP)
                .is_none()
        );
        // Later changes still allocate around what was adopted.
        let s = lb.apply(vec![(
            "default/new".into(),
            Some(plan(Ipv4Addr::new(10, 96, 2, 1), &[1, 2, 3, 4, 5], true)),
        )]);
        assert_eq!(s.added, 1);
        for (i, (_, p)) in next.iter().enumerate() {
            let k = p.frontends.keys().next().unwrap();
            let got: Vec<u8> = lb
                .maps()
                .get(Ipv4Addr::from(k.addr), k.port, k.proto)
                .unwrap()
                .backends
                .iter()
                .map(|b| b.addr[3])
                .collect();
            let want: Vec<u8> = p.backends.iter().map(|b| b.addr[3]).collect();
            assert_eq!(got, want, "service {i}'s backends were overwritten");
        }
    });
    let _ = std::fs::remove_dir_all(&root);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
