//! The VM state as the contract shows it, and the pure rules that decide
//! what an action does in a given state.
//!
//! ```text
//!                define                start
//!   (unknown) ───────────▶ stopped ───────────▶ running
//!       ▲                  │  ▲  ◀─────────────   │  ▲
//!       │     undefine     │  │   stop/shutdown   │  │ reboot
//!       └──────────────────┘  │                   └──┘
//!                             └── provision (stopped only)
//! ```
//!
//! `state` is the two-element array `[state, substate]` that the Vagoth
//! monitor unpacks; `state` is one of `running`, `stopped`, `paused`,
//! `unknown`, and `substate` refines it (`starting`, `stopping`, `frozen`,
//! ...) or repeats it when there is nothing to add.

use serde::{Serialize, Serializer};

/// The coarse power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    /// Running (or on its way up or down; see the substate).
    Running,
    /// Stopped.
    Stopped,
    /// Frozen.
    Paused,
    /// The hypervisor does not know it, or could not be asked.
    Unknown,
}

impl Power {
    /// The contract's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Power::Running => "running",
            Power::Stopped => "stopped",
            Power::Paused => "paused",
            Power::Unknown => "unknown",
        }
    }
}

/// `[state, substate]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmState {
    /// The coarse state.
    pub power: Power,
    /// The finer word.
    pub substate: String,
}

impl VmState {
    /// A state whose substate repeats the state.
    pub fn plain(power: Power) -> VmState {
        VmState { power, substate: power.as_str().to_string() }
    }

    /// A state with a substate.
    pub fn with(power: Power, substate: &str) -> VmState {
        VmState { power, substate: substate.to_string() }
    }

    /// Is it running (in any substate)?
    pub fn is_running(&self) -> bool {
        matches!(self.power, Power::Running | Power::Paused)
    }

    /// As the JSON array.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!([self.power.as_str(), self.substate])
    }
}

impl Serialize for VmState {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        [self.power.as_str(), self.substate.as_str()].serialize(s)
    }
}

/// What an action does, decided before any work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Do the work.
    Apply,
    /// Already satisfied: succeed with `changed: false`, touch nothing.
    AlreadyDone,
    /// Refused, with the reason.
    Deny(&'static str),
}

/// The power actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// Start.
    Start,
    /// Power off at once.
    Stop,
    /// Ask init to halt.
    Shutdown,
    /// Restart.
    Reboot,
}

/// The disposition of a power action in a state.
pub fn power_disposition(action: PowerAction, state: &VmState) -> Disposition {
    use Disposition::*;
    match (action, state.power) {
        (PowerAction::Start, Power::Running) => AlreadyDone,
        // A frozen container would need a thaw, which geats does not do.
        (PowerAction::Start, Power::Paused) => Deny("it is paused (frozen); unfreeze it first"),
        (PowerAction::Start, Power::Stopped | Power::Unknown) => Apply,
        (PowerAction::Stop | PowerAction::Shutdown, Power::Stopped) => AlreadyDone,
        // Stop is how an operator gets out of an unknown state.
        (PowerAction::Stop, Power::Running | Power::Paused | Power::Unknown) => Apply,
        (PowerAction::Shutdown, Power::Running) => Apply,
        // A frozen init cannot react to the halt signal.
        (PowerAction::Shutdown, Power::Paused) => Deny("it is paused (frozen) and cannot shut down cleanly; use stop"),
        (PowerAction::Shutdown, Power::Unknown) => Deny("its state is unknown; use stop"),
        (PowerAction::Reboot, Power::Running) => Apply,
        // As `virsh reboot` and `lxc restart`: rebooting needs a running VM.
        (PowerAction::Reboot, Power::Stopped | Power::Paused | Power::Unknown) => Deny("it is not running; use start"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Disposition::*;

    #[test]
    fn power_table() {
        let r = VmState::plain(Power::Running);
        let s = VmState::plain(Power::Stopped);
        let p = VmState::plain(Power::Paused);
        let cases = [
            (PowerAction::Start, &r, AlreadyDone),
            (PowerAction::Start, &s, Apply),
            (PowerAction::Stop, &s, AlreadyDone),
            (PowerAction::Stop, &r, Apply),
            (PowerAction::Stop, &p, Apply),
            (PowerAction::Shutdown, &s, AlreadyDone),
            (PowerAction::Shutdown, &r, Apply),
            (PowerAction::Reboot, &r, Apply),
        ];
        for (a, st, want) in cases {
            assert_eq!(power_disposition(a, st), want, "{a:?} in {st:?}");
        }
        assert!(matches!(power_disposition(PowerAction::Reboot, &s), Deny(_)));
        assert!(matches!(power_disposition(PowerAction::Start, &p), Deny(_)));
    }

    #[test]
    fn removal_table() {
    }

    #[test]
    fn state_serializes_as_pair() {
        let v = serde_json::to_value(VmState::with(Power::Running, "starting")).unwrap();
        assert_eq!(v, serde_json::json!(["running", "starting"]));
    }
}
