//! Fault injection: what a test does to one member's Raft traffic, and one bug it can switch on.
//!
//! Every member has a [`Faults`] (`Server::faults`), empty unless a test sets a [`Plan`]. The
//! transport consults it for each message (`transport.rs`):
//! - **partition**: nothing is sent to, or accepted from, the members in `partitioned` (cutting a
//!   member off on one side is enough: both directions are dropped there);
//! - **drop**, **duplicate**: each outgoing message is lost, or sent twice, with a probability;
//! - **delay**: each outgoing message waits a random time up to `max_delay` before it is queued,
//!   so messages also overtake one another (reordering).
//!
//! Raft must stay safe under all of these (it assumes an asynchronous network that loses,
//! duplicates and reorders); the fault tests check that it also stays available once the
//! network heals.
//!
//! One switch is a bug on purpose: `stale_reads` answers linearizable reads from local state
//! without a read index — what a member cut off from its cluster must never do. The
//! linearizability tests turn it on to prove that their checker catches the stale reads it causes.
//!
//! With no plan set, the cost is one atomic load per message.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::RwLock;

/// What to do to this member's traffic (see the module doc). The default does nothing.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Members cut off from this one, both ways.
    pub partitioned: HashSet<u64>,
    /// Probability (0 to 1) that an outgoing message is lost.
    pub drop: f64,
    /// Probability (0 to 1) that an outgoing message is sent twice.
    pub duplicate: f64,
    /// Outgoing messages wait a random time up to this before they are queued.
    pub max_delay: Duration,
    /// The bug: linearizable reads served locally, without a read index.
    pub stale_reads: bool,
}

/// What happens to one outgoing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Send it this many times (1 or 2), after this delay.
    Send { copies: usize, delay: Duration },
    /// Lose it.
    Drop,
}

/// One member's faults (see the module doc).
#[derive(Debug, Default)]
pub struct Faults {
    /// Whether a plan is set: the fast path reads only this.
    active: AtomicBool,
    plan: RwLock<Plan>,
}

impl Faults {
    /// Applies `plan` from now on (replacing the previous one).
    pub fn set(&self, plan: Plan) {
        *self.plan.write() = plan;
        self.active.store(true, Ordering::SeqCst);
    }

    /// Changes the current plan in place.
    pub fn update(&self, change: impl FnOnce(&mut Plan)) {
        change(&mut self.plan.write());
        self.active.store(true, Ordering::SeqCst);
    }

    /// Back to a healthy network and correct reads.
    pub fn clear(&self) {
        self.active.store(false, Ordering::SeqCst);
        *self.plan.write() = Plan::default();
    }

    /// The fate of a message to `to`.
    pub fn outgoing(&self, to: u64) -> Fate {
        if !self.active.load(Ordering::Relaxed) {
            return Fate::Send {
                copies: 1,
                delay: Duration::ZERO,
            };
        }
        let plan = self.plan.read();
        if plan.partitioned.contains(&to) || chance(plan.drop) {
            return Fate::Drop;
        }
        let copies = if chance(plan.duplicate) { 2 } else { 1 };
        let delay = if plan.max_delay.is_zero() {
            Duration::ZERO
        } else {
            plan.max_delay.mul_f64(fastrand::f64())
        };
        Fate::Send { copies, delay }
    }

    /// Whether a message from `from` is accepted.
    pub fn accepts_from(&self, from: u64) -> bool {
        !self.active.load(Ordering::Relaxed) || !self.plan.read().partitioned.contains(&from)
    }

    /// Whether the stale-read bug is on.
    pub fn stale_reads(&self) -> bool {
        self.active.load(Ordering::Relaxed) && self.plan.read().stale_reads
    }
}

fn chance(p: f64) -> bool {
    p > 0.0 && fastrand::f64() < p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_plan_sends_everything_once_at_once() {
        let faults = Faults::default();
        let fate = faults.outgoing(2);
        assert_eq!(
            fate,
            Fate::Send {
                copies: 1,
                delay: Duration::ZERO
            }
        );
        assert!(faults.accepts_from(2));
        assert!(!faults.stale_reads());
    }

    #[test]
    fn a_partition_cuts_both_directions_until_cleared() {
        let faults = Faults::default();
        faults.set(Plan {
            partitioned: HashSet::from([2]),
            ..Plan::default()
        });
        assert_eq!(faults.outgoing(2), Fate::Drop);
        assert!(!faults.accepts_from(2));
        assert_ne!(
            faults.outgoing(3),
            Fate::Drop,
            "other members are reachable"
        );
        faults.clear();
        assert!(faults.accepts_from(2));
    }

    /// Over many messages, drops and duplicates come near their probabilities and delays stay
    /// within the bound.
    #[test]
    fn probabilities_and_delays_are_honoured() {
        let faults = Faults::default();
        faults.set(Plan {
            drop: 0.2,
            duplicate: 0.5,
            max_delay: Duration::from_millis(10),
            ..Plan::default()
        });
        let (mut dropped, mut doubled) = (0, 0);
        for _ in 0..10_000 {
            match faults.outgoing(2) {
                Fate::Drop => dropped += 1,
                Fate::Send { copies, delay } => {
                    assert!(delay <= Duration::from_millis(10));
                    doubled += usize::from(copies == 2);
                }
            }
        }
        assert!((1_500..2_500).contains(&dropped), "dropped {dropped}");
        assert!((3_500..4_500).contains(&doubled), "doubled {doubled}");
    }
}
