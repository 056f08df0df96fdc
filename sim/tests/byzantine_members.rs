//! Byzantine members against membership, through the same cores (the simulator changes only
//! the updates a Byzantine node piggybacks on its SWIM messages): validly signed false
//! accusations (all Byzantine nodes accusing the same honest member each second, plus one
//! random honest member each), `Dead` at `u64::MAX` with a made-up proof, and Sybil joins
//! (made-up ids, unsigned or signed with the attacker's own key). 10% and 30% of 1k nodes:
//! no honest member removed anywhere, every honest node gets every message.

use mesh_sim::{MemberAttack, SimConfig, run};

#[test]
fn false_accusations_and_sybil_joins_remove_no_honest_member() {
    for f in [0.1, 0.3] {
        let mut cfg = SimConfig::new(1_000, 3);
        cfg.byzantine = f;
        cfg.member_attack = MemberAttack::FalseAccusations;
        // 40 s of broadcasts: longer than the 15 s minimum suspicion at 1k
        cfg.broadcasts = 40;
        let r = run(&cfg);
        println!("{}", r.table());
        assert_eq!(r.honest_removed, 0, "{f}: honest members removed");
        assert_eq!(
            r.delivery_ratio, 1.0,
            "{f}: every honest node gets every message"
        );
        assert!(
            r.invalid_statements > 0,
            "{f}: the forged statements arrived"
        );
        assert!(r.suspicions > 0 || r.probes > 0);
    }
}
