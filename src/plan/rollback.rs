//! The strategy of a one-command rollback, derived from the strategy of the rollout it undoes.

use crate::plan::Capacity;
use crate::spec::{BlueGreenSpec, IntOrPercent, RollingSpec, Strategy, StrategySpec};

/// How a rollback to the previous version goes, for a rollout that used `original` on a target of
/// `capacity`: blue-green goes back the way it came (old set up beside the new, one switch, then
/// retire); a target that can add instances brings the previous set back at full size at once
/// (surge 100%, nothing unavailable); hosts go back in waves of `max_unavailable`.
pub fn rollback_strategy(
    original: &Strategy,
    capacity: Capacity,
    max_unavailable: IntOrPercent,
) -> StrategySpec {
    if matches!(original, Strategy::BlueGreen(_)) {
        return StrategySpec {
            blue_green: Some(BlueGreenSpec {
                auto_promotion_enabled: true,
                auto_promotion_seconds: 0,
                preview_replica_count: 0,
                scale_down_delay_seconds: 0,
                min_ready_seconds: 0,
                pre_promotion_analysis: None,
                post_promotion_analysis: None,
            }),
            ..Default::default()
        };
    }
    let (max_surge, max_unavailable) = match capacity {
        Capacity::Elastic => (IntOrPercent::Percent(100), IntOrPercent::Int(0)),
        Capacity::InPlace | Capacity::TwoSlots => (IntOrPercent::Int(0), max_unavailable),
    };
    StrategySpec {
        rolling: Some(RollingSpec {
            max_surge,
            max_unavailable,
            min_ready_seconds: 0,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rolling() -> Strategy {
        Strategy::Rolling(RollingSpec {
            max_surge: IntOrPercent::Int(1),
            max_unavailable: IntOrPercent::Int(1),
            min_ready_seconds: 5,
        })
    }

    #[test]
    fn elastic_targets_come_back_at_full_size_at_once() {
        let s = rollback_strategy(&rolling(), Capacity::Elastic, IntOrPercent::Int(3));
        let r = s.rolling.expect("rolling");
        assert_eq!(r.max_surge, IntOrPercent::Percent(100));
        assert_eq!(r.max_unavailable, IntOrPercent::Int(0));
        assert_eq!(r.min_ready_seconds, 0);
    }

    #[test]
    fn hosts_come_back_in_waves_of_max_unavailable() {
        for cap in [Capacity::InPlace, Capacity::TwoSlots] {
            let r = rollback_strategy(&rolling(), cap, IntOrPercent::Int(3))
                .rolling
                .expect("rolling");
            assert_eq!(r.max_surge, IntOrPercent::Int(0));
            assert_eq!(r.max_unavailable, IntOrPercent::Int(3));
        }
    }

    #[test]
    fn blue_green_goes_back_with_one_switch() {
        let original = Strategy::BlueGreen(BlueGreenSpec {
            auto_promotion_enabled: false,
            auto_promotion_seconds: 30,
            preview_replica_count: 1,
            scale_down_delay_seconds: 30,
            min_ready_seconds: 5,
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
        });
        let s = rollback_strategy(&original, Capacity::TwoSlots, IntOrPercent::Int(1));
        assert!(s.rolling.is_none());
        let b = s.blue_green.expect("blue-green");
        assert!(b.auto_promotion_enabled);
        assert_eq!(b.scale_down_delay_seconds, 0);
    }
}
