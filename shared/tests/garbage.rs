//! Property tests: no input from etcd, the network or a file makes the parsers panic.

use proptest::prelude::*;
use shared::config::Config;
use shared::dcs::*;
use shared::types::{Lsn, parse_bytes, parse_seconds, slot_name};

/// Strings that look a little like what the parsers expect, plus arbitrary ones.
fn noisy() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\[\\]{}\":,0-9a-z_ .-]{0,80}",
        "\\{\"(conn_url|role|state|xlog_location|optime|slots|leader|member|sync_standby|ttl)\":[\\[\\]{}\"0-9a-z,:.-]{0,40}\\}",
    ]
}

proptest! {
    #[test]
    fn dcs_values_never_panic(raw in noisy()) {
        let _ = MemberData::parse(&raw).map(|m| (m.to_json(), m.host_port(), m.failover_priority()));
        let _ = Status::parse(&raw).map(|s| s.to_json());
        let _ = parse_history(&raw).map(|h| history_json(&h));
        let _ = Failover::parse(&raw).map(|f| f.to_json());
        let _ = SyncState::parse(&raw).map(|s| s.to_json());
        let _ = DynamicConfig::parse(&raw).map(|c| (c.timing(), c.parameters(), c.member_slots_ttl()));
    }

    #[test]
    fn whole_clusters_of_garbage_never_panic(keys in proptest::collection::vec(("(initialize|config|leader|status|history|sync|failover|failsafe|optime/leader|members/[a-z]{0,3}|members/|x/y)", noisy()), 0..12)) {
        let p = "/service/demo/";
        let kvs: Vec<KeyValue> = keys.iter().enumerate().map(|(i, (k, v))| KeyValue {
            key: format!("{p}{k}"),
            value: v.clone(),
            create_revision: i as i64,
            mod_revision: i as i64,
            lease: 0,
        }).collect();
        let c = parse_cluster(p, "demo", &kvs, 1);
        let _ = (c.timeline(), c.is_paused(), shared::api::cluster_json(&c));
    }

    #[test]
    fn units_and_names_never_panic(s in any::<String>()) {
        let _ = s.parse::<Lsn>();
        let _ = parse_bytes(&s);
        let _ = parse_seconds(&s);
        prop_assert!(slot_name(&s).chars().count() <= 63);
    }

    #[test]
    fn config_files_never_panic(text in "[a-z_:\\[\\]{}0-9 .\\n-]{0,200}") {
        let _ = Config::from_yaml(&text, "fuzz.yml");
    }
}
