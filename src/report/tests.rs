//! Unit tests of the review output (`report::diff`).

use super::diff::*;
use crate::model::Model;
use crate::nft::tx::Transaction;
use crate::nft::Ruleset;

#[test]
fn chain_names_name_their_service() {
    assert_eq!(
        chain_service("service-ACYUFME2-edge/front/tcp/https").as_deref(),
        Some("edge/front:https")
    );
    assert_eq!(
        chain_service("endpoint-ABCDEFGH-edge/plain-np/udp/__10.0.0.1/80").as_deref(),
        Some("edge/plain-np")
    );
    assert_eq!(chain_service("nat-prerouting"), None);
    assert_eq!(chain_service("cluster-ips-check"), None);
}

#[test]
fn the_same_model_changes_nothing() {
    let m = Model::default();
    assert!(port_changes(&m, &m).is_empty());
    assert!(node_summary(
        &Transaction::new(),
        &Ruleset::default(),
        &Ruleset::default()
    )
    .starts_with("no drift"));
}
